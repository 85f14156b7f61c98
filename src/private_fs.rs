//! Files that hold events carry personal data (personal numbers, IBANs): the bridge creates them
//! readable and writable by its own user only (0600), and the directories it creates for them
//! 0700. An existing file or directory keeps its mode (an operator may have chosen one).

use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::path::Path;

/// `OpenOptions` whose `create` makes a 0600 file.
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o
}

/// Creates `dir` and its missing parents as 0700 directories.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let mut b = DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

#[cfg(all(test, unix))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn files_and_directories_are_private() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("a/b");
        create_dir_all(&dir).unwrap();
        let f = dir.join("events.jsonl");
        options().create(true).append(true).open(&f).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&t.path().join("a")), 0o700);
        assert_eq!(mode(&f), 0o600);
    }
}
