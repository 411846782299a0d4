//! Landlock, by raw system calls: the rules name inodes of the minimal root, which exists only in
//! the child, and the child of a multi-threaded process must not allocate.

#[allow(unused_imports)]
use super::*;

pub(super) const LL_FS_EXECUTE: u64 = 1 << 0;
pub(super) const LL_FS_WRITE_FILE: u64 = 1 << 1;
pub(super) const LL_FS_READ_FILE: u64 = 1 << 2;
pub(super) const LL_FS_READ_DIR: u64 = 1 << 3;
/// Every filesystem right of ABI v1 (execute .. make_sym).
pub(super) const LL_FS_ABI1: u64 = (1 << 13) - 1;
pub(super) const LL_FS_REFER: u64 = 1 << 13;
pub(super) const LL_FS_TRUNCATE: u64 = 1 << 14;
pub(super) const LL_FS_IOCTL_DEV: u64 = 1 << 15;
pub(super) const LL_NET_BIND_TCP: u64 = 1 << 0;
pub(super) const LL_NET_CONNECT_TCP: u64 = 1 << 1;
pub(super) const LL_SCOPE_ABSTRACT_UNIX: u64 = 1 << 0;
pub(super) const LL_SCOPE_SIGNAL: u64 = 1 << 1;
pub(super) const LL_RULE_PATH_BENEATH: libc::c_long = 1;
pub(super) const LL_CREATE_RULESET_VERSION: libc::c_long = 1;

#[repr(C)]
pub(super) struct LandlockRulesetAttr {
    pub(super) handled_access_fs: u64,
    pub(super) handled_access_net: u64,
    pub(super) scoped: u64,
}

#[repr(C, packed)]
pub(super) struct LandlockPathBeneath {
    pub(super) allowed_access: u64,
    pub(super) parent_fd: i32,
}

/// The kernel's Landlock ABI version, or why there is none.
pub(super) fn landlock_abi() -> std::result::Result<u32, String> {
    // SAFETY: the version query takes no pointer.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LL_CREATE_RULESET_VERSION,
        )
    };
    if v < 1 {
        return Err(format!(
            "landlock: not available ({})",
            std::io::Error::last_os_error()
        ));
    }
    Ok(v as u32)
}

pub(super) fn landlock_fs_rights(abi: u32) -> u64 {
    let mut r = LL_FS_ABI1;
    if abi >= 2 {
        r |= LL_FS_REFER;
    }
    if abi >= 3 {
        r |= LL_FS_TRUNCATE;
    }
    if abi >= 5 {
        r |= LL_FS_IOCTL_DEV;
    }
    r
}

/// Child side: read and execute under `/`, everything under `/tmp`, read and write of
/// `/dev/null`; no TCP bind or connect (ABI 4+); no abstract UNIX sockets or signals beyond
/// the program's own processes (ABI 6+).
///
/// # Safety
/// Must run in the forked child after the pivot; makes only system calls.
pub(super) unsafe fn landlock_restrict(abi: u32) -> bool {
    let fs = landlock_fs_rights(abi);
    let attr = LandlockRulesetAttr {
        handled_access_fs: fs,
        handled_access_net: if abi >= 4 {
            LL_NET_BIND_TCP | LL_NET_CONNECT_TCP
        } else {
            0
        },
        scoped: if abi >= 6 {
            LL_SCOPE_ABSTRACT_UNIX | LL_SCOPE_SIGNAL
        } else {
            0
        },
    };
    let size = match abi {
        1..=3 => 8,
        4..=5 => 16,
        _ => 24,
    };
    // SAFETY: attr outlives the calls; every fd is checked and closed.
    unsafe {
        let rs = libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const LandlockRulesetAttr,
            size as usize,
            0,
        ) as i32;
        if rs < 0 {
            return false;
        }
        let rules: [(&CStr, u64); 3] = [
            (c"/", LL_FS_EXECUTE | LL_FS_READ_FILE | LL_FS_READ_DIR),
            (c"/tmp", fs),
            (
                c"/dev/null",
                LL_FS_READ_FILE | LL_FS_WRITE_FILE | (fs & LL_FS_TRUNCATE),
            ),
        ];
        for (path, access) in rules {
            let fd = libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
            if fd < 0 {
                if path == c"/dev/null" {
                    continue;
                }
                libc::close(rs);
                return false;
            }
            let rule = LandlockPathBeneath {
                allowed_access: access,
                parent_fd: fd,
            };
            let r = libc::syscall(
                libc::SYS_landlock_add_rule,
                rs,
                LL_RULE_PATH_BENEATH,
                &rule as *const LandlockPathBeneath,
                0,
            );
            libc::close(fd);
            if r != 0 {
                libc::close(rs);
                return false;
            }
        }
        let r = libc::syscall(libc::SYS_landlock_restrict_self, rs, 0);
        libc::close(rs);
        r == 0
    }
}
