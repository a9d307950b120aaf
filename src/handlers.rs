//! The thread that runs a registry's handlers for changes this instance did not make.
//!
//! Remote statuses, expiries and connection losses are applied by the driver, which runs on
//! a backend's I/O executor (smol's for Redis, the gRPC client's runtime) or on its own
//! thread. A handler run there could stall every key's propagation, the renewals and, for
//! Redis, all I/O of the process for as long as it blocks. So the driver only queues such
//! changes here, and one thread per registry (`reactive-lock-handlers-<instance>`, started
//! at the first handler call) runs them in order.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::sync::Arc;

type Job = Box<dyn FnOnce() + Send + 'static>;

pub(crate) struct HandlerThread {
    name: String,
    queue: parking_lot::Mutex<Queue>,
    wake: parking_lot::Condvar,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    started: bool,
    closed: bool,
}

impl HandlerThread {
    pub(crate) fn new(name: String) -> Arc<Self> {
        Arc::new(HandlerThread {
            name,
            queue: parking_lot::Mutex::new(Queue::default()),
            wake: parking_lot::Condvar::new(),
        })
    }

    /// Runs `job` on the handler thread, after the jobs queued before it. Once the registry
    /// is gone, or when no thread can be started, it runs on the calling thread instead:
    /// handlers still run, late rather than never.
    pub(crate) fn run(self: &Arc<Self>, job: Job) {
        let mut queue = self.queue.lock();
        if queue.closed {
            drop(queue);
            job();
            return;
        }
        queue.jobs.push_back(job);
        if queue.started {
            drop(queue);
            self.wake.notify_one();
            return;
        }
        let this = self.clone();
        match std::thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || this.work())
        {
            Ok(_) => queue.started = true,
            Err(error) => {
                let jobs = core::mem::take(&mut queue.jobs);
                drop(queue);
                tracing::warn!(%error, "reactive-lock: cannot start the handler thread; running handlers on the driver");
                jobs.into_iter().for_each(|job| job());
            }
        }
    }

    /// Lets the thread end once its queue is empty; later jobs run where they are made.
    pub(crate) fn close(&self) {
        self.queue.lock().closed = true;
        self.wake.notify_one();
    }

    fn work(self: Arc<Self>) {
        let mut queue = self.queue.lock();
        loop {
            if let Some(job) = queue.jobs.pop_front() {
                drop(queue);
                // Each handler's panic is caught where it runs; nothing here unwinds.
                job();
                queue = self.queue.lock();
            } else if queue.closed {
                // A closed queue takes no more jobs: whatever is queued is done.
                return;
            } else {
                self.wake.wait(&mut queue);
            }
        }
    }
}
