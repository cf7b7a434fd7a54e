//! The writer of NBD I/O traces (nbd.trace_dir): one thread, started at the first chunk, that
//! appends the chunks the sessions hand out to their files, so a worker never waits for the
//! disk. The queue is bounded in bytes (nbd.trace_queue_bytes_max, read at each chunk): a chunk
//! that would pass it is refused and its lines counted as dropped, as are the lines of a write
//! that fails. Files are opened per chunk (append) and closed at once: no descriptor is held
//! per traced connection.

use crate::metrics::{Counter, WorkerCounters};
use crate::nbd::trace::Chunk;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};

#[derive(Default)]
pub struct TraceWriter {
    tx: OnceLock<Mutex<mpsc::Sender<Chunk>>>,
    /// Bytes queued and not yet written.
    pending: std::sync::Arc<AtomicU64>,
    /// Connection numbers of trace files.
    next: AtomicU64,
    /// The writer thread's own counter block (lines of failed writes), summed into /metrics.
    pub counters: std::sync::Arc<WorkerCounters>,
}

impl TraceWriter {
    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Queues `c` unless the queue would pass `queue_max` bytes; false when refused.
    pub fn send(&self, c: Chunk, queue_max: u64) -> bool {
        let n = c.bytes.len() as u64;
        if self.pending.fetch_add(n, Ordering::Relaxed) + n > queue_max {
            self.pending.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        let tx = self.tx.get_or_init(|| Mutex::new(self.spawn()));
        // Uncontended but for the rare moment two workers hand a chunk at once.
        let sent = tx.lock().unwrap().send(c).is_ok();
        if !sent {
            self.pending.fetch_sub(n, Ordering::Relaxed);
        }
        sent
    }

    fn spawn(&self) -> mpsc::Sender<Chunk> {
        let (tx, rx) = mpsc::channel::<Chunk>();
        let (pending, counters) = (self.pending.clone(), self.counters.clone());
        let r = std::thread::Builder::new().name("bootfarm-trace".into()).spawn(move || {
            let mut failed_logged = false;
            for c in rx {
                let n = c.bytes.len() as u64;
                let r = std::fs::OpenOptions::new().create(true).append(true).open(&c.path).and_then(|mut f| f.write_all(&c.bytes));
                pending.fetch_sub(n, Ordering::Relaxed);
                if let Err(e) = r {
                    counters.add(Counter::NbdTraceDropped, c.lines);
                    if !failed_logged {
                        // Once per run: a full or read-only disk would fail every chunk.
                        tracing::warn!(file = %c.path.display(), "nbd trace write failed: {e}; its lines are dropped (counted in bootfarm_nbd_trace_lines_dropped_total)");
                        failed_logged = true;
                    }
                }
            }
        });
        if let Err(e) = r {
            tracing::warn!("cannot start the nbd trace writer: {e}; trace lines are dropped");
        }
        tx
    }
}
