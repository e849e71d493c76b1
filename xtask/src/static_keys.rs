//! In a guest of the matrix: holds on the kernel's static keys that the tests would otherwise
//! turn on and off hundreds of times. Each turn patches the kernel's code while the other CPU
//! runs it (an int3 first, then the jump); under QEMU's software emulation a CPU can still run
//! the int3 after the patch is done, which the kernel takes for a stray breakpoint: an oops, or
//! a guest that goes down without a word when it hits in a softirq. A real CPU does not. Held
//! on, a key is patched once. What holds them does nothing else: sockets, programs that let
//! everything through on a cgroup no process is in and on a dummy device in a namespace of its
//! own.
use std::{
    ffi::CString,
    fs,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// What keeps the keys on; dropping it lets them go.
pub struct Held {
    _fds: Vec<OwnedFd>,
    _netstamp: Option<socket2::Socket>,
}

/// Holds what it can, saying on one line each what it could not.
pub fn hold() -> Held {
    let mut fds = Vec::new();
    match cgroup_hooks() {
        Ok(()) => {}
        Err(err) => println!("guest: the cgroup hooks' static keys are not held: {err:#}"),
    }
    match tc_hooks() {
        Ok(mut held) => fds.append(&mut held),
        Err(err) => println!("guest: TC's static keys are not held: {err:#}"),
    }
    Held {
        _fds: fds,
        _netstamp: netstamp(),
    }
}

/// A socket with SO_TIMESTAMP: `netstamp_needed_key`, which every ping of the tests turns on
/// and off otherwise (the emulated 6.12 guest died of it once: Oops: int3 in ip6_input_finish).
fn netstamp() -> Option<socket2::Socket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).ok()?;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMP,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    (rc == 0).then_some(socket)
}

// From the kernel's uapi (linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_F_ALLOW_MULTI: u32 = 2;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
/// The attach types of the daemon's host access hooks (`#[cgroup_sock_addr]` in
/// bridgenet-ebpf): connect, sendmsg, recvmsg and getpeername, IPv4 and IPv6. Each has a key.
const SOCK_ADDR_HOOKS: [u32; 8] = [10, 11, 14, 15, 19, 20, 29, 30];

/// The daemon's cgroup hooks' keys (`cgroup_bpf_enabled_key`, one per attach type, turned on
/// by the first program attached anywhere and off by the last one gone): a program that
/// allows everything on each, on a cgroup of their own that no process joins.
fn cgroup_hooks() -> Result<()> {
    let mount = Path::new("/tmp/bridgenet-keys-cgroup");
    fs::create_dir_all(mount)?;
    let status = Command::new("mount")
        .args(["-t", "cgroup2", "none"])
        .arg(mount)
        .status()
        .context("running mount")?;
    if !status.success() {
        bail!("mount -t cgroup2 failed");
    }
    let cgroup = mount.join("bridgenet-keys");
    fs::create_dir_all(&cgroup)?;
    let dir = fs::File::open(&cgroup)?;
    for hook in SOCK_ADDR_HOOKS {
        // r0 = 1 (allow); exit.
        let prog = load(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, hook, 1)?;
        let mut attr = [0u32; 8];
        attr[0] = dir.as_raw_fd() as u32;
        attr[1] = prog.as_raw_fd() as u32;
        attr[2] = hook;
        attr[3] = BPF_F_ALLOW_MULTI;
        bpf(BPF_PROG_ATTACH, &mut attr).with_context(|| format!("attaching hook {hook}"))?;
    }
    // The programs stay with the cgroup; the mount is not needed any more.
    drop(dir);
    let _ = Command::new("umount").arg(mount).status();
    Ok(())
}

/// TC's keys (`ingress_needed_key`, `egress_needed_key`, and tcx's `tcx_needed_key` from Linux
/// 6.6): a clsact qdisc and, where there is tcx, a program that passes everything on each
/// side, on a veth in a namespace of its own. Returns the namespace and the tcx links.
fn tc_hooks() -> Result<Vec<OwnedFd>> {
    std::thread::spawn(|| -> Result<Vec<OwnedFd>> {
        // This thread's namespace, which the commands below inherit; its file keeps it alive
        // after the thread ends.
        // SAFETY: unshare(2) on the calling thread only.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            bail!("unshare: {}", std::io::Error::last_os_error());
        }
        let mut fds = vec![OwnedFd::from(fs::File::open("/proc/thread-self/ns/net")?)];
        for args in [
            // A veth pair rather than a dummy: not every kernel has the dummy driver.
            &[
                "ip", "link", "add", "keys0", "type", "veth", "peer", "name", "keys1",
            ][..],
            &["ip", "link", "set", "keys0", "up"],
            &["tc", "qdisc", "add", "dev", "keys0", "clsact"],
        ] {
            let status = Command::new(args[0]).args(&args[1..]).status()?;
            if !status.success() {
                bail!("{} failed", args.join(" "));
            }
        }
        // A filter run in software: `tcf_sw_enabled_key` (Linux 6.12), which the daemon's
        // netlink filters on endpoint veths turn on and off otherwise. Not every kernel has
        // matchall; the rest holds without it.
        let filter = [
            "filter", "add", "dev", "keys0", "ingress", "matchall", "action", "pass",
        ];
        if !Command::new("tc").args(filter).status()?.success() {
            println!(
                "guest: TC's software filter key is not held: tc {} failed",
                filter.join(" ")
            );
        }
        let name = CString::new("keys0")?;
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        // tcx: Linux 6.6 and later; before, the qdisc holds what there is.
        let mut tcx = 0;
        for side in [BPF_TCX_INGRESS, BPF_TCX_EGRESS] {
            // r0 = -1 (TCX_NEXT); exit.
            let prog = load(BPF_PROG_TYPE_SCHED_CLS, 0, -1)?;
            let mut attr = [0u32; 8];
            attr[0] = prog.as_raw_fd() as u32;
            attr[1] = ifindex;
            attr[2] = side;
            match bpf(BPF_LINK_CREATE, &mut attr) {
                Ok(link) => {
                    // SAFETY: a new link's fd, ours.
                    fds.push(unsafe { OwnedFd::from_raw_fd(link) });
                    tcx += 1;
                }
                Err(err) => {
                    println!("guest: tcx's static key is not held (Linux 6.6 and later): {err:#}");
                    break;
                }
            }
        }
        println!("guest: TC's static keys held, {tcx} tcx links");
        Ok(fds)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread panicked"))?
}

/// Loads `r0 = ret; exit` as a program of `prog_type` (`attach_type`: its expected one).
fn load(prog_type: u32, attach_type: u32, ret: i32) -> Result<OwnedFd> {
    let insns: [u64; 2] = [
        // BPF_ALU64 | BPF_MOV | BPF_K into r0, the immediate in the upper 32 bits.
        0xb7 | (u64::from(ret as u32) << 32),
        // BPF_JMP | BPF_EXIT.
        0x95,
    ];
    let license = c"GPL";
    // union bpf_attr's BPF_PROG_LOAD part, as u32 words: prog_type, insn_cnt, insns (u64),
    // license (u64), log_level, log_size, log_buf (u64), kern_version, prog_flags,
    // prog_name[16], prog_ifindex, expected_attach_type.
    let mut attr = [0u32; 32];
    attr[0] = prog_type;
    attr[1] = insns.len() as u32;
    let insns_at = insns.as_ptr() as u64;
    (attr[2], attr[3]) = (insns_at as u32, (insns_at >> 32) as u32);
    let license_at = license.as_ptr() as u64;
    (attr[4], attr[5]) = (license_at as u32, (license_at >> 32) as u32);
    attr[17] = attach_type;
    let fd = bpf(BPF_PROG_LOAD, &mut attr).context("loading a program")?;
    // SAFETY: a new program's fd, ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The bpf(2) system call with `attr`; its result, or the error it set.
fn bpf<const N: usize>(cmd: libc::c_long, attr: &mut [u32; N]) -> Result<i32> {
    // SAFETY: attr is a zero-padded union bpf_attr of the size given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            size_of::<[u32; N]>() as libc::c_uint,
        )
    };
    if rc < 0 {
        bail!("bpf: {}", std::io::Error::last_os_error());
    }
    Ok(rc as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux 6.6 and later: both tcx links made (the namespace's file and two links).
    #[test]
    fn tc_hooks_hold_tcx_on_both_sides_where_there_is_tcx() {
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut numbers = release
            .split(['.', '-'])
            .map(|n| n.parse::<u32>().unwrap_or(0));
        let version = (numbers.next().unwrap(), numbers.next().unwrap());
        let held = tc_hooks().unwrap();
        let links = if version >= (6, 6) { 2 } else { 0 };
        assert_eq!(held.len(), 1 + links, "Linux {release}");
    }
}
