use std::process::ExitCode;

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use vmblob_vsp::{Args, Shutdown, VspConfig};

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::new().filter_level(args.log_level).parse_default_env().init();
    let config = match VspConfig::try_from(args) {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let shutdown = match Shutdown::new() {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot create shutdown event: {e}");
            return ExitCode::FAILURE;
        }
    };
    match Signals::new([SIGTERM, SIGINT]) {
        Ok(mut signals) => {
            let s = shutdown.clone();
            std::thread::spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    log::info!("signal {sig}: shutting down");
                    s.request();
                }
            });
        }
        Err(e) => log::warn!("no signal handling: {e}"),
    }
    log::info!("listening on {} (store {:?}, {} queues)", config.socket_path.display(), config.store, config.queues);
    match vmblob_vsp::run(&config, &shutdown) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
