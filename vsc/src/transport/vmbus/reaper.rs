//! The channel thread: reap completions on interrupts, handle rescind and
//! host failures, pick up the re-offered channel.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use vmblob_protocol::framing::vmbus::{Packet, parse_blob_completion, parse_packet};
use vmblob_vmbus::{IncomingRing, ReadError, RingMem};

use super::link::Link;
use super::{Inner, lock};
use crate::error::ProtocolError;
use crate::transport::Completion;
use crate::transport::vmbus::channel::ChannelError;
use vmblob_vmbus::RawChannel;

/// Why a channel stopped being served.
enum Down {
    /// The transport is closing.
    Stopping,
    /// Someone else took this channel down already.
    Replaced,
    /// Rescinded by the host, or the host broke the protocol.
    Failed(String),
    /// The DMA pool moved under the host's page numbers: nothing it posted
    /// can be trusted, and a re-offered channel would get the same stale
    /// numbers, so the transport closes for good.
    Unpinned(String),
}

/// Why a uio channel's rings are left alone after its rescind.
const RINGS_FREED: &str = "rescinded; the kernel freed the rings, nothing more is read from them";

/// Completions handled before the read index is released.
const BATCH: usize = 64;

impl Inner {
    /// The thread's life: serve a channel until it goes, then wait for the next.
    pub(super) fn run(self: Arc<Self>, mut generation: u64, mut channel: RawChannel) {
        loop {
            match self.serve(generation, &channel) {
                Down::Stopping => return,
                Down::Replaced => {}
                Down::Failed(why) => self.take_down(generation, &why),
                Down::Unpinned(why) => {
                    log::error!("VMBus transport closed: {why}");
                    self.close_for_good(generation, &why);
                    return;
                }
            }
            // Close it before anything else: the host must stop touching the
            // quarantined buffers before they are released.
            drop(channel);
            if !self.opts.reopen {
                return;
            }
            match self.wait_for_offer() {
                Some((g, c)) => (generation, channel) = (g, c),
                None => return,
            }
        }
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// The link lock, to hold across an access to channel `generation`'s
    /// rings; `Err` once it is not the live channel any more, or its rings
    /// went with a rescind (see [`Inner::rings_usable`]).
    fn lock_rings(&self, generation: u64, channel: &RawChannel) -> Result<MutexGuard<'_, Link>, Down> {
        let link = lock(&self.link);
        if link.generation != generation || link.live.is_none() {
            return Err(Down::Replaced);
        }
        if !self.rings_usable(channel) {
            return Err(Down::Failed(RINGS_FREED.into()));
        }
        Ok(link)
    }

    fn serve(&self, generation: u64, channel: &RawChannel) -> Down {
        let attached = match self.lock_rings(generation, channel) {
            Ok(_rings) => IncomingRing::new(channel.incoming.clone()),
            Err(down) => return down,
        };
        let mut incoming = match attached {
            Ok(r) => r,
            Err(e) => return Down::Failed(format!("host-to-guest ring unusable: {e}")),
        };
        loop {
            if self.stopping() {
                return Down::Stopping;
            }
            // Before reaping: a completion from moved memory is not one.
            if let Err(e) = self.source.check_pinned() {
                return Down::Unpinned(format!("DMA pool not pinned: {e}"));
            }
            if let Err(down) = self.drain(generation, channel, &mut incoming) {
                return down;
            }
            if channel.signal.is_rescinded() {
                return self.rescinded(generation, channel, &mut incoming);
            }
            // Unmask, then look again: a completion posted before the host
            // saw the mask cleared is not signalled.
            let posted = match self.lock_rings(generation, channel) {
                Ok(_rings) => incoming.unmask_and_check(),
                Err(down) => return down,
            };
            match posted {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => return Down::Failed(format!("host-to-guest ring corrupt: {e}")),
            }
            if let Err(e) = channel.signal.unmask().map_err(ChannelError::from) {
                return self.channel_error(generation, channel, &mut incoming, e);
            }
            match channel.signal.wait(Some(self.opts.wait_slice)).map_err(ChannelError::from) {
                // The host may also have freed space in the guest-to-host ring.
                Ok(_) => self.space.notify_all(),
                Err(e) => return self.channel_error(generation, channel, &mut incoming, e),
            }
        }
    }

    fn channel_error(
        &self,
        generation: u64,
        channel: &RawChannel,
        incoming: &mut IncomingRing<Arc<dyn RingMem>>,
        e: ChannelError,
    ) -> Down {
        match e {
            ChannelError::Rescinded => self.rescinded(generation, channel, incoming),
            e => Down::Failed(format!("channel error: {e}")),
        }
    }

    /// The host rescinded the channel. Where its rings outlive the rescind,
    /// the host completed what it could before (completion on rescind):
    /// hand those out. A uio channel's rings are freed already, so nothing
    /// is read. Then fail the rest. Waits for nothing else, least of all for
    /// the clients.
    fn rescinded(&self, generation: u64, channel: &RawChannel, incoming: &mut IncomingRing<Arc<dyn RingMem>>) -> Down {
        if !self.rings_outlive_rescind {
            return Down::Failed(RINGS_FREED.into());
        }
        match self.drain(generation, channel, incoming) {
            Ok(()) => {}
            Err(Down::Failed(why)) => log::warn!("after the rescind: {why}"),
            Err(down) => return down,
        }
        Down::Failed("rescinded".into())
    }

    /// Read every posted completion and complete its request. `Err` when the
    /// host broke the protocol (the channel must then go), or the channel
    /// is no longer live or its rings went with a rescind.
    fn drain(
        &self,
        generation: u64,
        channel: &RawChannel,
        incoming: &mut IncomingRing<Arc<dyn RingMem>>,
    ) -> Result<(), Down> {
        loop {
            let mut batch = Vec::new();
            let mut corrupt = None;
            {
                let _rings = self.lock_rings(generation, channel)?;
                while batch.len() < BATCH {
                    match incoming.read() {
                        Ok(p) => batch.push(p),
                        Err(ReadError::Empty) => break,
                        Err(ReadError::Corrupt(e)) => {
                            corrupt = Some(format!("host-to-guest ring corrupt: {e}"));
                            break;
                        }
                    }
                }
                if incoming.commit_read()
                    && let Err(e) = channel.signal.signal_peer()
                {
                    log::debug!("signalling the host failed: {e}");
                }
            }
            let more = batch.len() == BATCH;
            let n = batch.len();
            for bytes in batch {
                self.complete(generation, &bytes).map_err(Down::Failed)?;
            }
            if n > 0 {
                // In-flight slots were freed.
                self.space.notify_all();
            }
            if let Some(why) = corrupt {
                return Err(Down::Failed(why));
            }
            if !more {
                return Ok(());
            }
        }
    }

    /// One packet from the host: it must complete a request sent on this
    /// channel and not completed yet, with a well-formed response.
    fn complete(&self, generation: u64, bytes: &[u8]) -> Result<(), String> {
        let (id, payload) = match parse_packet(bytes, 0) {
            Ok(Packet::Completion { transaction_id, payload }) => (transaction_id, payload),
            Ok(other) => return Err(format!("host sent a packet that is not a completion: {}", kind(&other))),
            Err(e) => return Err(format!("host sent a malformed packet: {e}")),
        };
        let known = {
            let mut link = lock(&self.link);
            let current = link.generation == generation;
            match link.live.as_mut() {
                Some(live) if current => live.sent.remove(&id),
                _ => false,
            }
        };
        if !known {
            return Err(format!("completion for unknown requestor id {id}"));
        }
        self.completions.fetch_add(1, Ordering::Relaxed);
        // Checks the size and the `length` field too.
        let response = match parse_blob_completion(&payload) {
            Ok(r) => r,
            Err(e) => {
                let violation = ProtocolError::BadCompletion { len: payload.len(), source: e };
                let msg = format!("id {id}: {violation}");
                self.table.complete(id, |_| Err(violation.into()));
                return Err(msg);
            }
        };
        let mut lie = None;
        self.table.complete(id, |b| {
            crate::transport::check_response(&response, &b).inspect_err(|e| lie = Some(e.to_string()))?;
            Ok(Completion { response, buffers: b })
        });
        match lie {
            Some(why) => Err(format!("id {id}: {why}")),
            None => Ok(()),
        }
    }

    /// Wait for the host to offer the channel again and install it.
    fn wait_for_offer(&self) -> Option<(u64, RawChannel)> {
        while !self.stopping() {
            match self.source.open(self.opts.wait_slice) {
                Ok(Some(channel)) => match self.install(channel.clone()) {
                    Ok(generation) => return Some((generation, channel)),
                    Err(e) => {
                        log::warn!("cannot use the re-offered channel: {e}");
                        std::thread::sleep(self.opts.retry_interval);
                    }
                },
                Ok(None) => {}
                Err(e) => {
                    log::debug!("opening the re-offered channel failed: {e}");
                    std::thread::sleep(self.opts.retry_interval);
                }
            }
        }
        None
    }
}

fn kind(p: &Packet) -> &'static str {
    match p {
        Packet::InBand { .. } => "in-band data",
        Packet::Completion { .. } => "completion",
        Packet::GpaDirect { .. } => "GPA-direct data",
    }
}
