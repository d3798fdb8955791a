//! The micro-VM: one KVM VM whose single memslot is guest RAM, a vCPU started at CPL3 in 64-bit
//! long mode, and the hypercall loop.
//!
//! KVM here may be PVM (MACHINE.md): CPL3 code runs natively, exceptions cannot be delivered to
//! the guest, and the virtual IOPL is lost on every exit. The guest therefore never leaves CPL3
//! and reaches the VMM with `out` to ports the TSS I/O bitmap opens; KVM's emulator checks that
//! bitmap when it handles the `#GP` the `out` raises in hardware.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, kvm_dtable, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

use crate::abi::{self, BootInfo, GuestReport, call};
use crate::elf::GuestImage;
use crate::error::VmError;
use crate::memory::GuestRam;
use crate::state::VcpuState;

/// How to build the VM.
#[derive(Debug, Clone, Default)]
pub struct VmOptions {
    /// Track writes with KVM's dirty log (`KVM_MEM_LOG_DIRTY_PAGES`).
    pub dirty_log: bool,
}

/// Something the guest told the VMM.
#[derive(Debug)]
pub enum GuestEvent<'a> {
    /// A line printed by the guest.
    Print(&'a str),
    /// Progress: operations done of total, in a phase of `abi::phase`.
    Progress {
        /// Operations done.
        done: u64,
        /// Operations planned.
        total: u64,
        /// The phase.
        phase: u64,
    },
    /// The guest's final report.
    Report(Box<GuestReport>),
}

/// Why [`MicroVm::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunExit {
    /// The guest exited with this status (`abi::status`).
    Exited(u64),
    /// [`Pauser::pause`] stopped the vCPU; it can be saved, or run again.
    Paused,
}

/// Stops a running vCPU from another thread: a numbered request plus a signal that kicks it
/// out of `KVM_RUN`, resent until the vCPU notices. Each pause of the vCPU serves every request
/// made before it, so a request is never lost and never served twice.
#[derive(Debug, Clone, Default)]
pub struct Pauser {
    inner: Arc<PauseInner>,
}

#[derive(Debug, Default)]
struct PauseInner {
    /// Pause requests made so far.
    requests: AtomicU64,
    /// Requests served: the value of `requests` when the vCPU last paused.
    served: AtomicU64,
    running: AtomicBool,
    thread: AtomicU64,
    /// Set by [`Pauser::abort`]; never cleared.
    aborted: AtomicBool,
    abort_reason: std::sync::Mutex<Option<String>>,
}

impl Pauser {
    /// Asks the vCPU to stop and waits until it has (or until it is not running at all): until
    /// [`MicroVm::run`] has returned [`RunExit::Paused`] for this request.
    pub fn pause(&self) {
        let mine = self.inner.requests.fetch_add(1, Ordering::SeqCst) + 1;
        while self.inner.running.load(Ordering::SeqCst) && self.inner.served.load(Ordering::SeqCst) < mine {
            let tid = self.inner.thread.load(Ordering::SeqCst);
            if tid != 0 {
                // SAFETY: `tid` is the pthread_t of the vCPU thread, stored while it runs
                // (`running`); the signal has a no-op handler installed by `kick_signal()`.
                unsafe { libc::pthread_kill(tid as libc::pthread_t, kick_signal()) };
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Asks the vCPU to stop without waiting: [`MicroVm::run`] returns [`RunExit::Paused`] before
    /// it next enters the guest. Safe to call from the `run` callback itself.
    pub fn request(&self) {
        self.inner.requests.fetch_add(1, Ordering::SeqCst);
    }

    /// Withdraws the requests not served yet, so the next [`MicroVm::run`] continues. (A pause
    /// already serves every request made before it; this is only for a requester that changed
    /// its mind.)
    pub fn clear(&self) {
        self.inner.served.fetch_max(self.inner.requests.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Whether a pause was requested and not served yet.
    pub fn requested(&self) -> bool {
        self.inner.requests.load(Ordering::SeqCst) > self.inner.served.load(Ordering::SeqCst)
    }

    /// Stops the VM for good because the page server serving its memory is gone: the running
    /// [`MicroVm::run`] (and every later one) returns [`VmError::PageServerDied`] with `reason`.
    ///
    /// A vCPU blocked inside `KVM_RUN` on a userfaultfd fault that will never be served is
    /// interrupted by the kick signal (KVM waits for such faults interruptibly). A thread
    /// blocked on such a fault in user space (the VMM itself copying to guest memory) is not:
    /// the access is retried after the signal. Returns whether the vCPU left `run` within
    /// `timeout` (or was not running); if not, the caller's last resort is to exit the process.
    pub fn abort(&self, reason: impl Into<String>, timeout: Duration) -> bool {
        let mut slot = self.inner.abort_reason.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert_with(|| reason.into());
        drop(slot);
        self.inner.aborted.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        while self.inner.running.load(Ordering::SeqCst) {
            if Instant::now() >= deadline {
                return false;
            }
            let tid = self.inner.thread.load(Ordering::SeqCst);
            if tid != 0 {
                // SAFETY: as in `pause`: the vCPU thread's pthread_t, stored while it runs; the
                // signal's handler is a no-op.
                unsafe { libc::pthread_kill(tid as libc::pthread_t, kick_signal()) };
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        true
    }

    /// Whether [`abort`](Self::abort) was called.
    pub fn aborted(&self) -> bool {
        self.inner.aborted.load(Ordering::SeqCst)
    }

    fn abort_error(&self) -> VmError {
        let reason = self.inner.abort_reason.lock().unwrap_or_else(|p| p.into_inner()).clone();
        VmError::PageServerDied(reason.unwrap_or_else(|| "no reason given".into()))
    }
}

extern "C" fn on_kick(_: libc::c_int) {}

/// The signal that interrupts `KVM_RUN` (SIGRTMIN + 3), with a no-op handler installed once.
fn kick_signal() -> libc::c_int {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    let sig = libc::SIGRTMIN() + 3;
    INSTALLED.call_once(|| {
        // SAFETY: installs a handler that does nothing (async-signal-safe) for a real-time
        // signal nothing else in the process uses; no SA_RESTART, so KVM_RUN returns EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    });
    sig
}

/// TSC ticks per millisecond, measured against the monotonic clock over 20 ms.
pub fn tsc_per_ms() -> u64 {
    static CACHED: AtomicU64 = AtomicU64::new(0);
    let c = CACHED.load(Ordering::Relaxed);
    if c != 0 {
        return c;
    }
    let rdtsc = || {
        // SAFETY: `rdtsc` has no memory effects.
        unsafe { core::arch::x86_64::_rdtsc() }
    };
    let (t0, i0) = (rdtsc(), Instant::now());
    std::thread::sleep(Duration::from_millis(20));
    let (t1, el) = (rdtsc(), i0.elapsed());
    let per_ms = ((t1 - t0) as f64 / (el.as_secs_f64() * 1000.0)) as u64;
    CACHED.store(per_ms.max(1), Ordering::Relaxed);
    per_ms.max(1)
}

const PDE_2M: u64 = 0x87; // present | writable | user | 2 MiB page
const TABLE: u64 = 0x7; // present | writable | user

/// The VM.
#[derive(Debug)]
pub struct MicroVm<'m> {
    _kvm: Kvm,
    vm: VmFd,
    vcpu: VcpuFd,
    ram: GuestRam<'m>,
    options: VmOptions,
    pauser: Pauser,
}

impl<'m> MicroVm<'m> {
    /// Creates a VM over `ram` (a multiple of 2 MiB, at least `abi::MIN_RAM`) with one vCPU.
    pub fn new(ram: GuestRam<'m>, options: VmOptions) -> Result<Self, VmError> {
        let bytes = ram.len();
        if !(abi::MIN_RAM..=abi::MAX_RAM).contains(&bytes) || !bytes.is_multiple_of(2 << 20) {
            return Err(VmError::BadMemory {
                bytes,
                why: format!(
                    "must be a multiple of 2 MiB between {} MiB and {} GiB",
                    abi::MIN_RAM >> 20,
                    abi::MAX_RAM >> 30
                ),
            });
        }
        let kvm = crate::open_kvm()?;
        let vm = kvm.create_vm().map_err(VmError::kvm("KVM_CREATE_VM"))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: bytes,
            userspace_addr: ram.host_addr(),
            flags: if options.dirty_log { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
        };
        // SAFETY: the memslot points at `ram`, which stays mapped for 'm, and this VM (which
        // holds the only use of the slot) does not outlive 'm.
        unsafe { vm.set_user_memory_region(region) }.map_err(VmError::kvm("KVM_SET_USER_MEMORY_REGION"))?;
        let vcpu = vm.create_vcpu(0).map_err(VmError::kvm("KVM_CREATE_VCPU"))?;
        Ok(Self { _kvm: kvm, vm, vcpu, ram, options, pauser: Pauser::default() })
    }

    /// Guest RAM.
    pub fn ram(&self) -> GuestRam<'m> {
        self.ram
    }

    /// A handle that pauses [`run`](Self::run) from another thread.
    pub fn pauser(&self) -> Pauser {
        self.pauser.clone()
    }

    /// Writes the page tables, GDT, TSS, boot block and `image` into guest RAM and points the
    /// vCPU at the entry point, at CPL3.
    pub fn boot(&self, image: &GuestImage, boot: &BootInfo) -> Result<(), VmError> {
        self.write_tables()?;
        for seg in &image.segments {
            self.ram.write(seg.addr, &seg.data)?;
            let bss = seg.mem_size - seg.data.len() as u64;
            self.ram.write(seg.addr + seg.data.len() as u64, &vec![0u8; bss as usize])?;
        }
        self.ram.write_obj(abi::BOOT_INFO_GPA, boot)?;
        self.set_initial_registers(image.entry)
    }

    /// A boot block for this VM's RAM with the calibrated TSC and defaults; set the workload
    /// fields before booting.
    pub fn boot_info(&self) -> BootInfo {
        BootInfo {
            magic: abi::BOOT_MAGIC,
            ram_bytes: self.ram.len(),
            heap_start: abi::HEAP_GPA,
            heap_end: self.ram.len(),
            tsc_per_ms: tsc_per_ms(),
            progress_every: 4096,
            // 5 µs: a 4 KiB page already in DRAM is read in well under a microsecond.
            fault_threshold_ticks: tsc_per_ms() * 5 / 1000,
            zipf_s_milli: 990,
            rounds: 1,
            ..BootInfo::default()
        }
    }

    fn write_tables(&self) -> Result<(), VmError> {
        let ram = self.ram.len();
        let gib = ram.div_ceil(1 << 30);
        let mut pml4 = [0u64; 512];
        pml4[0] = abi::PDPT_GPA | TABLE;
        self.ram.write_obj(abi::PML4_GPA, &pml4)?;
        let mut pdpt = [0u64; 512];
        for (i, e) in pdpt.iter_mut().enumerate().take(gib as usize) {
            *e = (abi::PD_GPA + i as u64 * abi::PAGE) | TABLE;
        }
        self.ram.write_obj(abi::PDPT_GPA, &pdpt)?;
        for g in 0..gib {
            let mut pd = [0u64; 512];
            for (i, e) in pd.iter_mut().enumerate() {
                let addr = (g << 30) + ((i as u64) << 21);
                if addr < ram {
                    *e = addr | PDE_2M;
                }
            }
            self.ram.write_obj(abi::PD_GPA + g * abi::PAGE, &pd)?;
        }
        // GDT: null, three unused, user data (0x23), user code 64-bit (0x2b), 64-bit TSS (0x30).
        let tss_limit = tss_limit();
        let tss_lo = (tss_limit & 0xffff)
            | ((abi::TSS_GPA & 0xff_ffff) << 16)
            | (0x89 << 40)
            | (((tss_limit >> 16) & 0xf) << 48)
            | (((abi::TSS_GPA >> 24) & 0xff) << 56);
        let gdt: [u64; 8] = [0, 0, 0, 0, 0x00cf_f300_0000_ffff, 0x00af_fb00_0000_ffff, tss_lo, abi::TSS_GPA >> 32];
        self.ram.write_obj(abi::GDT_GPA, &gdt)?;
        // TSS: I/O map base at offset 102 points just past the 104-byte TSS; the bitmap is zero
        // (open) for ports below IO_BITMAP_PORTS and ends with the required 0xff byte.
        let mut tss = vec![0u8; tss_limit as usize + 1];
        tss[102..104].copy_from_slice(&104u16.to_le_bytes());
        *tss.last_mut().expect("non-empty") = 0xff;
        self.ram.write(abi::TSS_GPA, &tss)
    }

    fn set_initial_registers(&self, entry: u64) -> Result<(), VmError> {
        let mut sregs = self.vcpu.get_sregs().map_err(VmError::kvm("KVM_GET_SREGS"))?;
        let code = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: abi::USER_CS,
            type_: 0xb,
            present: 1,
            dpl: 3,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            ..Default::default()
        };
        let data = kvm_segment { selector: abi::USER_DS, type_: 0x3, db: 1, l: 0, ..code };
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.tr = kvm_segment {
            base: abi::TSS_GPA,
            limit: tss_limit() as u32,
            selector: abi::TSS_SEL,
            type_: 0xb,
            present: 1,
            ..Default::default()
        };
        sregs.gdt = kvm_dtable { base: abi::GDT_GPA, limit: 8 * 8 - 1, ..Default::default() };
        sregs.idt = kvm_dtable::default();
        sregs.cr3 = abi::PML4_GPA;
        sregs.cr4 = 0x620; // PAE | OSFXSR | OSXMMEXCPT
        sregs.cr0 = 0x8005_0033; // PE | MP | ET | NE | WP | AM | PG
        sregs.efer = 0x500; // LME | LMA
        self.vcpu.set_sregs(&sregs).map_err(VmError::kvm("KVM_SET_SREGS"))?;
        let regs = kvm_bindings::kvm_regs {
            rip: entry,
            rsp: abi::STACK_TOP_GPA - 8,
            rflags: 0x3002, // IOPL 3 (lost on PVM; the TSS bitmap is what lets `out` through)
            ..Default::default()
        };
        self.vcpu.set_regs(&regs).map_err(VmError::kvm("KVM_SET_REGS"))
    }

    /// Runs the vCPU until the guest exits or [`Pauser::pause`] stops it, passing what the
    /// guest says to `on_event`.
    pub fn run(&mut self, on_event: &mut dyn FnMut(GuestEvent<'_>)) -> Result<RunExit, VmError> {
        let sig = kick_signal();
        let inner = Arc::clone(&self.pauser.inner);
        // SAFETY: pthread_self has no preconditions.
        inner.thread.store(unsafe { libc::pthread_self() } as u64, Ordering::SeqCst);
        inner.running.store(true, Ordering::SeqCst);
        let _running = Running(&inner);
        debug_assert!(sig > 0);
        loop {
            if inner.aborted.load(Ordering::SeqCst) {
                return Err(self.pauser.abort_error());
            }
            let requests = inner.requests.load(Ordering::SeqCst);
            if requests > inner.served.load(Ordering::SeqCst) {
                inner.served.fetch_max(requests, Ordering::SeqCst);
                return Ok(RunExit::Paused);
            }
            let exit = match self.vcpu.run() {
                Ok(exit) => exit,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => return Err(VmError::kvm("KVM_RUN")(e)),
            };
            match exit {
                VcpuExit::IoOut(abi::HC_PORT, data) => {
                    let nr = u32::from_le_bytes(data.get(..4).and_then(|d| d.try_into().ok()).unwrap_or([0xff; 4]));
                    if let Some(status) = self.hypercall(nr, on_event)? {
                        return Ok(RunExit::Exited(status));
                    }
                }
                VcpuExit::Shutdown => {
                    let rip = self.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                    return Err(VmError::GuestCrashed(format!(
                        "the vCPU shut down (triple fault) at rip {rip:#x}: the guest touched memory \
                         outside its RAM or executed an instruction that faults at CPL3"
                    )));
                }
                VcpuExit::Hlt => return Err(VmError::GuestCrashed("the guest halted".into())),
                other => {
                    let what = format!("{other:?}");
                    let rip = self.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                    return Err(VmError::GuestCrashed(format!("unexpected exit {what} at rip {rip:#x}")));
                }
            }
        }
    }

    fn hypercall(&mut self, nr: u32, on_event: &mut dyn FnMut(GuestEvent<'_>)) -> Result<Option<u64>, VmError> {
        let regs = self.vcpu.get_regs().map_err(VmError::kvm("KVM_GET_REGS"))?;
        let (a, b, c) = (regs.rdi, regs.rsi, regs.r8);
        match nr {
            call::EXIT => return Ok(Some(a)),
            call::PRINT => {
                let mut buf = vec![0u8; b.min(4096) as usize];
                self.ram.read(a, &mut buf)?;
                on_event(GuestEvent::Print(&String::from_utf8_lossy(&buf)));
            }
            call::PROGRESS => on_event(GuestEvent::Progress { done: a, total: b, phase: c }),
            call::REPORT => {
                let rep: GuestReport = self.ram.read_obj(abi::REPORT_GPA)?;
                if rep.magic != abi::REPORT_MAGIC {
                    return Err(VmError::GuestCrashed("the guest's report block is not a report".into()));
                }
                on_event(GuestEvent::Report(Box::new(rep)));
            }
            other => {
                return Err(VmError::GuestCrashed(format!("unknown hypercall {other} at rip {:#x}", regs.rip)));
            }
        }
        Ok(None)
    }

    /// Saves the vCPU's state (the VM must not be running).
    pub fn save_vcpu(&self) -> Result<VcpuState, VmError> {
        VcpuState::save(&self.vcpu)
    }

    /// Loads a saved vCPU state (instead of [`boot`](Self::boot), over RAM that holds the
    /// memory the state was saved with).
    pub fn restore_vcpu(&self, state: &VcpuState) -> Result<(), VmError> {
        state.restore(&self.vcpu)
    }

    /// Guest page numbers (guest-physical address / 4096) written since the last call, from
    /// KVM's dirty log, which this call clears. Needs [`VmOptions::dirty_log`].
    ///
    /// On PVM the first *read* of a page the vCPU has not mapped yet is reported as a write too,
    /// so the set can be larger than what the guest wrote, never smaller.
    pub fn take_dirty_pages(&self) -> Result<Vec<u64>, VmError> {
        if !self.options.dirty_log {
            return Err(VmError::Kvm {
                what: "KVM_GET_DIRTY_LOG",
                source: std::io::Error::other("the VM was created without dirty logging"),
            });
        }
        let bitmap = self.vm.get_dirty_log(0, self.ram.len() as usize).map_err(VmError::kvm("KVM_GET_DIRTY_LOG"))?;
        let mut pages = Vec::new();
        for (w, &bits) in bitmap.iter().enumerate() {
            let mut b = bits;
            while b != 0 {
                let i = b.trailing_zeros() as u64;
                pages.push(w as u64 * 64 + i);
                b &= b - 1;
            }
        }
        Ok(pages)
    }
}

fn tss_limit() -> u64 {
    104 + u64::from(abi::IO_BITMAP_PORTS) / 8
}

/// Clears the `running` flag when `run` returns by any path.
struct Running<'a>(&'a PauseInner);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::SeqCst);
        self.0.thread.store(0, Ordering::SeqCst);
    }
}
