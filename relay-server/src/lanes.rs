//! Lanes: which thread a task runs on. Bulk work (the body of a large response, from
//! the client's target to the relay's visitor) runs on one thread per process in the
//! kernel's idle scheduling class, so that on a busy machine small exchanges never
//! wait for it (docs/streaming.md, "The bulk lane").
//!
//! A task spawned with [`spawn`] carries a [`Switch`]. When the switch is flipped, the
//! task moves to the other lane's runtime the next time it is polled: at the end of
//! the poll that flipped it, when the task flipped it itself (the usual case), or at
//! its next wake-up otherwise. The task's future moves whole (it is boxed, so it
//! stays pinned); its sockets stay registered with the runtime that opened them,
//! which wakes it wherever it runs.
//!
//! QUIC connection drivers are spawned by quinn through [`LanedRuntime`], so a bulk
//! lane's connection (packets, encryption, acknowledgements) runs on the bulk thread
//! too: [`last_spawned`] hands out the switch of the driver that quinn spawned while
//! accepting or opening it. Their timers follow them (`LanedTimer`): a timer stays
//! with the runtime it was created on, and a driver moved after its handshake would
//! otherwise wake the main thread at every deadline.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::runtime::Handle;
use tracing::debug;

type BoxedTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Which lane a task wants to run on, shared by the task and whoever moves it.
#[derive(Debug, Default)]
pub struct Switch {
    bulk: AtomicBool,
}

impl Switch {
    /// A switch set to the main lane.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Moves the task to the bulk lane (a low-priority thread).
    pub fn to_bulk(&self) {
        self.bulk.store(true, Ordering::Release);
    }

    /// Moves the task back to the runtime it was spawned on.
    pub fn to_main(&self) {
        self.bulk.store(false, Ordering::Release);
    }

    fn wants_bulk(&self) -> bool {
        self.bulk.load(Ordering::Acquire)
    }
}

/// Sets the switch back to the main lane when dropped: held by whatever bulk work
/// moved a task, so the task comes back however that work ends.
#[derive(Debug)]
pub struct BackToMain(pub Arc<Switch>);

impl Drop for BackToMain {
    fn drop(&mut self) {
        self.0.to_main();
    }
}

/// Spawns `task` on the current runtime, movable between lanes by `switch`. No
/// `JoinHandle`: the spawned task ends whenever the future moves to another runtime.
pub fn spawn<F>(switch: Arc<Switch>, task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    spawn_boxed(switch, Box::pin(task));
}

fn spawn_boxed(switch: Arc<Switch>, task: BoxedTask) {
    let home = Handle::current();
    home.clone().spawn(Laned {
        task: Some(task),
        switch,
        home,
        on_bulk: false,
    });
}

struct Laned {
    task: Option<BoxedTask>,
    switch: Arc<Switch>,
    /// The runtime the task was spawned on: the main lane.
    home: Handle,
    on_bulk: bool,
}

impl Laned {
    /// Hands the task to the lane its switch asks for, if that is not this one.
    fn moved(&mut self) -> bool {
        let bulk = self.switch.wants_bulk();
        if bulk == self.on_bulk {
            return false;
        }
        let to = if bulk {
            match bulk_runtime() {
                Some(h) => h,
                None => return false,
            }
        } else {
            self.home.clone()
        };
        let Some(task) = self.task.take() else {
            return false;
        };
        to.spawn(Laned {
            task: Some(task),
            switch: self.switch.clone(),
            home: self.home.clone(),
            on_bulk: bulk,
        });
        true
    }
}

impl Future for Laned {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.moved() {
            return Poll::Ready(());
        }
        let Some(task) = this.task.as_mut() else {
            return Poll::Ready(());
        };
        if task.as_mut().poll(cx).is_ready() {
            this.task = None;
            return Poll::Ready(());
        }
        if this.moved() {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// The bulk lane's runtime: one thread per process, started on first use, in the
/// idle scheduling class (`SCHED_IDLE`), which runs only on CPU time that nothing
/// else wants. `None` if the thread could not be started (the task then stays on
/// the main lane).
fn bulk_runtime() -> Option<Handle> {
    static BULK: OnceLock<Option<Handle>> = OnceLock::new();
    BULK.get_or_init(|| match start_bulk_thread() {
        Ok(h) => Some(h),
        Err(e) => {
            debug!("bulk lane unavailable: {e}");
            None
        }
    })
    .clone()
}

thread_local! {
    static ON_BULK_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the caller runs on the bulk lane's thread.
fn on_bulk_thread() -> bool {
    ON_BULK_THREAD.with(|b| b.get())
}

fn start_bulk_thread() -> std::io::Result<Handle> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("porthole-bulk".into())
        .spawn(move || {
            set_idle_class();
            ON_BULK_THREAD.with(|b| b.set(true));
            rt.block_on(std::future::pending::<()>());
        })?;
    Ok(handle)
}

/// Puts the calling thread in the idle scheduling class. Lowering one's own priority
/// needs no privilege; where it fails, the lane still runs, at normal priority.
fn set_idle_class() {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadPriority, ThreadSchedulePolicy,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    if let Err(e) = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle) {
        debug!("bulk lane thread stays at normal priority: {e:?}");
    }
}

thread_local! {
    static LAST_SPAWNED: RefCell<Option<Arc<Switch>>> = const { RefCell::new(None) };
}

/// The switch of the task [`LanedRuntime`] last spawned on this thread. quinn spawns a
/// connection's driver inside `Incoming::accept` and `Endpoint::connect`, so calling
/// this right after either gives that connection's driver.
pub fn last_spawned() -> Option<Arc<Switch>> {
    LAST_SPAWNED.with(|s| s.borrow_mut().take())
}

/// quinn's tokio runtime, but every task it spawns (the endpoint's driver, each
/// connection's driver) can change lanes; see [`last_spawned`].
#[derive(Debug)]
pub struct LanedRuntime;

impl quinn::Runtime for LanedRuntime {
    fn new_timer(&self, at: std::time::Instant) -> Pin<Box<dyn quinn::AsyncTimer>> {
        Box::pin(LanedTimer::new(at))
    }

    fn spawn(&self, future: BoxedTask) {
        let switch = Switch::new();
        LAST_SPAWNED.with(|s| *s.borrow_mut() = Some(switch.clone()));
        spawn_boxed(switch, future);
    }

    fn wrap_udp_socket(
        &self,
        sock: std::net::UdpSocket,
    ) -> std::io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        Ok(Arc::new(crate::udp::Socket::new(sock)?))
    }
}

/// A QUIC connection's timer that registers with the runtime of the lane polling it.
/// A tokio timer belongs to the runtime it was created on, whose thread runs its
/// deadlines; a connection moved to the bulk lane would keep waking the main thread
/// (its acknowledgement delays, loss timers, pacing) for every one of them.
#[derive(Debug)]
struct LanedTimer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    on_bulk: bool,
}

impl LanedTimer {
    fn new(at: std::time::Instant) -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep_until(at.into())),
            on_bulk: on_bulk_thread(),
        }
    }
}

impl quinn::AsyncTimer for LanedTimer {
    fn reset(mut self: Pin<&mut Self>, at: std::time::Instant) {
        self.sleep.as_mut().reset(at.into());
    }

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let here = on_bulk_thread();
        if here != self.on_bulk {
            let at = self.sleep.deadline();
            *self = Self {
                sleep: Box::pin(tokio::time::sleep_until(at)),
                on_bulk: here,
            };
        }
        Future::poll(self.sleep.as_mut(), cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_name() -> String {
        std::thread::current().name().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn a_task_moves_to_the_bulk_thread_and_back() {
        let switch = Switch::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let s = switch.clone();
        spawn(switch.clone(), async move {
            tx.send(thread_name()).unwrap();
            // A task moves when it next yields.
            s.to_bulk();
            tokio::task::yield_now().await;
            tx.send(thread_name()).unwrap();
            let policy = std::fs::read_to_string("/proc/thread-self/sched")
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with("policy"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned());
            tx.send(policy.unwrap_or_default()).unwrap();
            drop(BackToMain(s));
            tokio::task::yield_now().await;
            tx.send(thread_name()).unwrap();
        });
        let home = rx.recv().await.unwrap();
        assert_ne!(home, "porthole-bulk");
        assert_eq!(rx.recv().await.unwrap(), "porthole-bulk");
        // 5 is SCHED_IDLE.
        assert_eq!(rx.recv().await.unwrap(), "5");
        assert_eq!(rx.recv().await.unwrap(), home);
    }

    #[test]
    fn a_timer_follows_its_task_to_the_bulk_thread() {
        use std::time::{Duration, Instant};
        // After `block_on` returns, nothing drives this runtime: a timer left
        // registered with it would never fire.
        let main = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (fired_tx, fired) = std::sync::mpsc::channel();
        main.block_on(async {
            let mut timer = LanedTimer::new(Instant::now() + Duration::from_millis(100));
            let (on_bulk_tx, on_bulk) = tokio::sync::oneshot::channel();
            let switch = Switch::new();
            switch.to_bulk();
            spawn(switch, async move {
                let _ = on_bulk_tx.send(thread_name());
                std::future::poll_fn(|cx| {
                    quinn::AsyncTimer::poll(std::pin::Pin::new(&mut timer), cx)
                })
                .await;
                let _ = fired_tx.send(thread_name());
            });
            assert_eq!(on_bulk.await.unwrap(), "porthole-bulk");
        });
        let fired = fired.recv_timeout(Duration::from_secs(10));
        assert_eq!(fired.as_deref(), Ok("porthole-bulk"));
        drop(main);
    }
}
