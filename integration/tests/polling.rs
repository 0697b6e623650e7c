//! Busy-polling completion: correct under traffic, silent when idle. Alone in
//! its test binary so the process CPU time measured is this test's only.

use std::time::Duration;

use vmblob_integration::data::pattern;
use vmblob_integration::{Guest, GuestOptions, Sandbox, Vsp, VspOptions};

#[test]
fn busy_polling_serves_traffic_and_stops_when_idle() {
    let sb = Sandbox::new();
    let vsp = Vsp::start(&sb.dir, VspOptions::default().queues(2));
    let g = Guest::connect(vsp.socket(), GuestOptions::default().queues(2).poll(Duration::from_micros(500)));
    g.container("poll").create().unwrap();
    for i in 0..300u64 {
        let data = pattern(i, 0, 4096 + i as usize);
        g.container("poll").blob(&format!("b{i}")).put(&data).unwrap();
        assert_eq!(g.container("poll").blob(&format!("b{i}")).get().unwrap(), data, "blob {i}");
    }
    // Polling must end once completions stop: an idle client burns no CPU.
    std::thread::sleep(Duration::from_millis(200));
    let me = std::process::id();
    let before = vmblob_integration::cpu_time_of(me);
    std::thread::sleep(Duration::from_secs(1));
    let burned = vmblob_integration::cpu_time_of(me) - before;
    assert!(burned < Duration::from_millis(150), "idle client used {burned:?} of CPU in 1 s");
}
