//! The CPU backend's threads: a rayon pool for prompts, and a team that spins between the small
//! parallel regions of decoding.
//!
//! Decoding one token is about a hundred parallel regions (fused Q/K/V, attention, output,
//! gate/up, down, per layer) of a few hundred microseconds each. Rayon's idle workers go to
//! sleep between them, and waking a sleeping thread costs tens of microseconds in a virtual
//! machine: 147 context switches per TinyLlama token were measured here, with the second core
//! idle 10% of the time. The team's workers spin for a while after each region (the caller's
//! serial work between regions is short), and only then park.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long an idle team worker spins before it parks: longer than the serial gaps inside a
/// token (norms, sampling, streaming), short enough not to burn a core for an idle server.
const SPIN: Duration = Duration::from_micros(500);

/// At most the bytes of the next region a team member reads into its L2 cache while it waits:
/// about what one core streams in a region's end and the serial work after it.
const AHEAD_BYTES: usize = 512 << 10;

/// What a member reads ahead: [`AHEAD_BYTES`], or a quarter of its L2 cache where that is
/// smaller (on a 512 KiB L2 the whole budget would evict the stream it is reading), 256 KiB
/// where the size is unknown.
fn ahead_budget() -> usize {
    l2_bytes().map_or(256 << 10, |l2| (l2 / 4).min(AHEAD_BYTES))
}

/// The first processor's L2 cache size, as Linux reports it.
fn l2_bytes() -> Option<usize> {
    (0..8).find_map(|i| {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
        let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).ok();
        if read("level")?.trim() != "2" || read("type")?.trim() == "Instruction" {
            return None;
        }
        let size = read("size")?;
        let size = size.trim();
        let (num, unit) = size.split_at(size.find(|c: char| !c.is_ascii_digit())?);
        let mult = match unit {
            "K" => 1 << 10,
            "M" => 1 << 20,
            _ => return None,
        };
        num.parse::<usize>().ok().map(|n| n * mult)
    })
}

/// Where a team member's share of a region starts: up to four `(address, bytes)` stretches,
/// read in order (a share may run from one matrix into the next); unused ones are empty.
pub type Spans = [(usize, usize); 4];

/// Member `m`'s tasks among `members` when a region has `tasks`: contiguous shares, the
/// caller's (member 0) first.
pub fn share(tasks: usize, m: usize, members: usize) -> std::ops::Range<usize> {
    tasks * m / members..tasks * (m + 1) / members
}

/// The rayon pool and the decode team, of the same size.
pub struct Threads {
    pool: rayon::ThreadPool,
    team: Team,
    /// What each member reads ahead after the next [`Threads::run_reading_ahead`] region.
    ahead: Mutex<Vec<Spans>>,
}

impl Threads {
    /// `n` threads (at least one): a rayon pool of `n` and a team of the caller plus `n - 1`.
    pub fn new(n: usize) -> std::io::Result<Threads> {
        let n = n.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("bakeoff-cpu-{i}"))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Threads {
            pool,
            team: Team::new(n - 1)?,
            ahead: Mutex::new(Vec::new()),
        })
    }

    /// Runs `f` inside the rayon pool.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    pub fn current_num_threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Runs `f(0..tasks)` on the team, the calling thread included, and returns when all are
    /// done. A panic in any task is raised again here.
    pub fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        self.team.run(tasks, f, &[])
    }

    /// The members of the team: the caller and its workers.
    pub fn members(&self) -> usize {
        self.team.shared.ranges.len()
    }

    /// Says where each member's share of a coming region starts (one [`Spans`] per member, of
    /// which it reads at most `AHEAD_BYTES`): after the next [`Threads::run_reading_ahead`] region, a
    /// member that has no task left reads its stretch into its cache until the region after
    /// it starts (a worker) or its last worker is done (the caller). The waits between a
    /// token's products then load weights instead of leaving the memory bus idle.
    pub fn read_ahead(&self, spans: Vec<Spans>) {
        *self.ahead.lock().unwrap_or_else(|e| e.into_inner()) = spans;
    }

    /// [`Threads::run`], with the members reading ahead what [`Threads::read_ahead`] last gave.
    pub fn run_reading_ahead(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let ahead = std::mem::take(&mut *self.ahead.lock().unwrap_or_else(|e| e.into_inner()));
        self.team.run(tasks, f, &ahead)
    }
}

/// Reads a member's [`Spans`] into its L2 cache a few lines at a time.
struct Reader {
    spans: Spans,
    span: usize,
    off: usize,
    budget: usize,
}

impl Reader {
    fn new(spans: Spans, budget: usize) -> Reader {
        Reader {
            spans,
            span: 0,
            off: 0,
            budget,
        }
    }

    /// Asks for the next `lines` cache lines; false once all are asked for.
    fn step(&mut self, lines: usize) -> bool {
        for _ in 0..lines {
            while self.span < self.spans.len() && self.off >= self.spans[self.span].1 {
                self.span += 1;
                self.off = 0;
            }
            if self.span == self.spans.len() || self.budget == 0 {
                return false;
            }
            prefetch_l2(self.spans[self.span].0.wrapping_add(self.off));
            self.off += 64;
            self.budget = self.budget.saturating_sub(64);
        }
        true
    }
}

/// A hint to load the cache line at `addr` into L2. It never faults, whatever `addr` is, so
/// a stale address (a model dropped since the spans were given) costs nothing but the hint.
#[inline]
fn prefetch_l2(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing architecturally and cannot fault; SSE is part of x86-64.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T1>(addr as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

struct Job {
    // The caller's closure with its lifetime erased: `Team::run` does not return (or unwind)
    // before no worker can reach it any more.
    f: *const (dyn Fn(usize) + Sync + 'static),
    /// Member `m`'s share of the tasks, `front << 32 | back`: the caller is member 0.
    ranges: *const [AtomicU64],
    /// What each member reads ahead once it has no task left; empty for none.
    ahead: *const [Spans],
    panicked: AtomicBool,
}

fn pack(front: usize, back: usize) -> u64 {
    ((front as u64) << 32) | back as u64
}

fn unpack(r: u64) -> (usize, usize) {
    ((r >> 32) as usize, (r & 0xffff_ffff) as usize)
}

impl Job {
    /// Member `me`'s stretch to read ahead, copied out while the job is alive.
    fn ahead(&self, me: usize) -> Option<Spans> {
        // SAFETY: as in `work`.
        unsafe { (&*self.ahead).get(me).copied() }
    }

    /// Runs member `me`'s tasks in order, then takes the last ones of the others.
    ///
    /// Each member walks a contiguous share: a decode task is a stretch of weight rows, and
    /// the kernel's prefetch runs ahead into the next task only when that is the next stretch
    /// of memory (one shared counter dealt the tasks out alternately, and every task started
    /// a new stream). Taking from the back of another share balances the end of a region
    /// without breaking that share's order.
    fn work(&self, me: usize) -> bool {
        // SAFETY: the ranges and the closure outlive every worker's use of the job (see
        // `Team::run`).
        let (ranges, f) = unsafe { (&*self.ranges, &*self.f) };
        let me = me % ranges.len();
        let order = std::iter::once(me).chain((1..ranges.len()).map(|k| (me + k) % ranges.len()));
        for (k, m) in order.enumerate() {
            let r = &ranges[m];
            let mut cur = r.load(Ordering::Relaxed);
            loop {
                let (front, back) = unpack(cur);
                if front >= back {
                    break;
                }
                let (next, task) = if k == 0 {
                    (pack(front + 1, back), front)
                } else {
                    (pack(front, back - 1), back - 1)
                };
                match r.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed) {
                    Ok(_) => {
                        if catch_unwind(AssertUnwindSafe(|| f(task))).is_err() {
                            self.panicked.store(true, Ordering::Relaxed);
                            return false;
                        }
                        cur = r.load(Ordering::Relaxed);
                    }
                    Err(now) => cur = now,
                }
            }
        }
        true
    }
}

struct Shared {
    /// Held by the `run` that owns the current job: a second caller (another thread, or a task
    /// that runs a region itself) works alone instead of replacing the job under the workers.
    busy: AtomicBool,
    epoch: AtomicUsize,
    job: AtomicPtr<Job>,
    /// Workers between announcing themselves and leaving the current job.
    active: AtomicUsize,
    sleeping: AtomicUsize,
    quit: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
    /// One task range per member, reused by every job (one job at a time: `busy`).
    ranges: Box<[AtomicU64]>,
    /// Bytes a member reads ahead ([`ahead_budget`]).
    ahead_bytes: usize,
}

struct Team {
    shared: Arc<Shared>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Team {
    fn new(extra: usize) -> std::io::Result<Team> {
        let shared = Arc::new(Shared {
            busy: AtomicBool::new(false),
            epoch: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            active: AtomicUsize::new(0),
            sleeping: AtomicUsize::new(0),
            quit: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            ranges: (0..=extra).map(|_| AtomicU64::new(0)).collect(),
            ahead_bytes: ahead_budget(),
        });
        let mut team = Team {
            shared,
            workers: Vec::with_capacity(extra),
        };
        for i in 0..extra {
            let s = team.shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("bakeoff-team-{}", i + 1))
                .spawn(move || worker(&s, i + 1))?;
            team.workers.push(h);
        }
        Ok(team)
    }

    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync), ahead: &[Spans]) {
        let s = &*self.shared;
        // More tasks than a range can count (a region has hundreds) run alone too.
        if tasks <= 1
            || tasks > u32::MAX as usize
            || self.workers.is_empty()
            || s.busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            (0..tasks).for_each(f);
            return;
        }
        // Released however this call ends, after the workers have left the job.
        struct Release<'a>(&'a AtomicBool);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _busy = Release(&s.busy);
        // SAFETY: only the lifetime is erased. Workers reach the closure through `job` while
        // counted in `active`; below, `job` is cleared and `active` drained before returning
        // or unwinding, so no worker holds the reference afterwards.
        let f: &(dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
        let members = s.ranges.len();
        for (m, r) in s.ranges.iter().enumerate() {
            let mine = share(tasks, m, members);
            r.store(pack(mine.start, mine.end), Ordering::Relaxed);
        }
        let job = Job {
            f,
            ranges: &*s.ranges,
            ahead,
            panicked: AtomicBool::new(false),
        };
        s.job
            .store(&job as *const Job as *mut Job, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleeping.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        // The caller claims tasks too, so every task is claimed when its loop ends; a parked
        // worker that wakes late finds no job and no work.
        let mine = catch_unwind(AssertUnwindSafe(|| job.work(0)));
        s.job.store(std::ptr::null_mut(), Ordering::SeqCst);
        let mut reader = job.ahead(0).map(|a| Reader::new(a, s.ahead_bytes));
        while s.active.load(Ordering::SeqCst) > 0 {
            if !reader.as_mut().is_some_and(|r| r.step(8)) {
                reader = None;
                std::hint::spin_loop();
            }
        }
        match mine {
            Err(p) => resume_unwind(p),
            Ok(false) => panic!("a decode task panicked"),
            Ok(true) if job.panicked.load(Ordering::Relaxed) => {
                panic!("a decode task panicked on a team thread")
            }
            Ok(true) => {}
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.quit.store(true, Ordering::SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

fn worker(s: &Shared, me: usize) {
    let mut seen = s.epoch.load(Ordering::SeqCst);
    loop {
        let mut since = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.quit.load(Ordering::Relaxed) {
                return;
            }
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && since.elapsed() > SPIN {
                let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleeping.fetch_add(1, Ordering::SeqCst);
                while s.epoch.load(Ordering::SeqCst) == seen && !s.quit.load(Ordering::SeqCst) {
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.sleeping.fetch_sub(1, Ordering::SeqCst);
                since = Instant::now();
            }
        }
        // Announce first, then look: `run` clears `job` before it waits for `active` to drain,
        // so a worker that still sees the job is one `run` waits for.
        s.active.fetch_add(1, Ordering::SeqCst);
        let p = s.job.load(Ordering::SeqCst);
        let mut ahead = None;
        if !p.is_null() {
            // SAFETY: see above; the job lives on the stack of a `run` that is waiting for us.
            unsafe {
                (*p).work(me);
                ahead = (*p).ahead(me);
            }
        }
        s.active.fetch_sub(1, Ordering::SeqCst);
        // Until the next region starts: the caller's serial work between regions, and the end
        // of its share if it is still at it.
        if let Some(spans) = ahead {
            let mut r = Reader::new(spans, s.ahead_bytes);
            while s.epoch.load(Ordering::Relaxed) == seen
                && !s.quit.load(Ordering::Relaxed)
                && r.step(8)
            {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_task_runs_once_across_many_regions() {
        let t = Threads::new(3).unwrap();
        for tasks in [0, 1, 2, 7, 64] {
            for _ in 0..200 {
                let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                t.run(tasks, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn concurrent_and_nested_regions_each_run_every_task_once() {
        let t = Threads::new(2).unwrap();
        let total = AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..3 {
                sc.spawn(|| {
                    for _ in 0..300 {
                        t.run(8, &|_| {
                            // A task that runs a region of its own.
                            t.run(4, &|_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 3 * 300 * 8 * 4);
    }

    /// Reading ahead changes nothing but the caches: every task still runs once, and an
    /// address no longer (or never) mapped is harmless.
    #[test]
    fn reading_ahead_runs_every_task_once() {
        let t = Threads::new(2).unwrap();
        let live = vec![7u8; 3 << 20];
        for round in 0..200 {
            let gone = vec![1u8; 4096];
            let spans: Vec<Spans> = (0..t.members())
                .map(|m| {
                    [
                        (live.as_ptr() as usize + m * (1 << 20), 1 << 20),
                        (gone.as_ptr() as usize, gone.len()),
                        (64, 4096),
                        (0, 0),
                    ]
                })
                .collect();
            drop(gone);
            t.read_ahead(spans);
            let hits: Vec<AtomicUsize> = (0..37).map(|_| AtomicUsize::new(0)).collect();
            t.run_reading_ahead(37, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "round {round}"
            );
        }
    }

    #[test]
    fn the_read_ahead_budget_fits_the_l2_cache() {
        let b = ahead_budget();
        assert!((1..=AHEAD_BYTES).contains(&b), "{b}");
        if let Some(l2) = l2_bytes() {
            assert!(b <= l2 / 4, "{l2} {b}");
        }
    }

    #[test]
    fn parked_workers_wake_for_the_next_region() {
        let t = Threads::new(2).unwrap();
        let sum = AtomicUsize::new(0);
        t.run(8, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        std::thread::sleep(SPIN * 4);
        t.run(8, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 56);
    }

    #[test]
    fn a_panicking_task_is_reported_to_the_caller() {
        let t = Threads::new(2).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            t.run(16, &|i| {
                if i == 11 {
                    panic!("task 11");
                }
            })
        }));
        assert!(r.is_err());
        // The team still works afterwards.
        let n = AtomicUsize::new(0);
        t.run(16, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 16);
    }
}
