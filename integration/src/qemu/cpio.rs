//! A minimal writer of the kernel's initramfs format (cpio "newc", SVR4
//! without checksums; Documentation/driver-api/early-userspace/buffer-format.rst),
//! so building the guest's root needs no cpio or gzip on the host.

/// An archive being built in memory.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    next_ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl Cpio {
    pub fn dir(&mut self, path: &str) {
        self.entry(path, S_IFDIR | 0o755, 2, (0, 0), &[]);
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, S_IFREG | (mode & 0o7777), 1, (0, 0), data);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
    }

    /// A character device node (the kernel opens `/dev/console` for init
    /// before anything is mounted).
    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32) {
        self.entry(path, S_IFCHR | 0o600, 1, (major, minor), &[]);
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
        self.out
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        let name = path.trim_start_matches('/');
        self.next_ino += 1;
        let size = u32::try_from(data.len()).expect("initramfs member under 4 GiB");
        let namesize = u32::try_from(name.len() + 1).expect("short name");
        let fields = [self.next_ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_aligned_and_named() {
        let mut c = Cpio::default();
        c.dir("/bin");
        c.file("/bin/x", 0o755, b"abc");
        c.symlink("/bin/sh", "busybox");
        let out = c.finish();
        assert_eq!(&out[..6], b"070701");
        assert_eq!(out.len() % 4, 0);
        // The second member starts 4-aligned, right after the padded first one.
        let second = out.windows(6).skip(1).position(|w| w == b"070701").unwrap() + 1;
        assert_eq!(second % 4, 0);
        assert_eq!(&out[second + 110..second + 115], b"bin/x");
        // The file's size field is 3 and its data follows the padded name.
        assert_eq!(&out[second + 54..second + 62], b"00000003");
        let data_at = (second + 110 + 6).next_multiple_of(4);
        assert_eq!(&out[data_at..data_at + 3], b"abc");
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
