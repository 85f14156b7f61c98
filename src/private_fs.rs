//! Files that hold events carry personal data (personal numbers, IBANs): the bridge creates them
//! readable and writable by its own user only (0600), and the directories it creates for them
//! 0700. An existing file or directory keeps its mode (an operator may have chosen one).
//!
//! Files that hold events are also created durably (the directory is fsynced after a file is
//! created, so the name survives a power loss with the data), and the JSON-lines files (the
//! dead-letter fallback, file-sink topics) always end on a whole line: [`cut_torn_line`].

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

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

/// fsyncs the directory holding `path`, so a file created there keeps its name after a power
/// loss. A filesystem that cannot fsync a directory (`EINVAL`) is taken as not needing it.
pub fn sync_parent_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match File::open(dir)?.sync_all() {
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(()),
        r => r,
    }
}

/// Opens `path` for appending (and reading), creating it 0600 when missing; a file it creates
/// has its directory fsynced before it is returned.
pub fn open_append(path: &Path) -> io::Result<File> {
    match options().read(true).append(true).open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        r => return r,
    }
    let f = match options()
        .read(true)
        .append(true)
        .create_new(true)
        .open(path)
    {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return options().read(true).append(true).open(path);
        }
        r => r?,
    };
    sync_parent_dir(path)?;
    Ok(f)
}

/// Bytes read at a time while looking for the end of the last whole line.
const SCAN_CHUNK: u64 = 64 * 1024;

/// Makes the JSON-lines file `file` (open for reading and appending, at `path`) end on a whole
/// line, so the next record starts on a line of its own. A last line without its newline is a
/// write that failed half-way or was cut short by a crash, and so was never acknowledged: it is
/// copied to `<file name>.torn-<unix ms>` next to the file (best effort: a full disk may refuse
/// the copy), logged, and cut off. Returns the file's length afterwards.
pub fn cut_torn_line(file: &File, path: &Path) -> io::Result<u64> {
    let len = file.metadata()?.len();
    if len == 0 || last_byte(file, len)? == b'\n' {
        return Ok(len);
    }
    let good = last_line_end(file, len)?;
    let quarantined = quarantine(file, path, good, len);
    file.set_len(good)?;
    file.sync_data()?;
    match quarantined {
        Ok(copy) => tracing::warn!(path = %path.display(), offset = good, bytes = len - good,
            quarantined = %copy.display(),
            "cut a torn last line (a write that never completed) off the file"),
        Err(e) => tracing::warn!(path = %path.display(), offset = good, bytes = len - good,
            error = %e,
            "cut a torn last line (a write that never completed) off the file; it could not be copied aside"),
    }
    Ok(good)
}

fn last_byte(mut file: &File, len: u64) -> io::Result<u8> {
    let mut b = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut b)?;
    Ok(b[0])
}

/// The offset just after the last `\n` before `len`; 0 when there is none.
fn last_line_end(mut file: &File, len: u64) -> io::Result<u64> {
    let mut end = len;
    let mut buf = Vec::new();
    while end > 0 {
        let start = end.saturating_sub(SCAN_CHUNK);
        buf.resize((end - start) as usize, 0);
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf)?;
        if let Some(i) = buf.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Copies bytes `from..to` of `file` to a new private file next to `path`.
fn quarantine(mut file: &File, path: &Path, from: u64, to: u64) -> io::Result<PathBuf> {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".torn-{ms}"));
    let target = path.with_file_name(name);
    let mut copy = || -> io::Result<()> {
        let mut dst = options().write(true).create_new(true).open(&target)?;
        file.seek(SeekFrom::Start(from))?;
        io::copy(&mut file.take(to - from), &mut dst)?;
        dst.sync_all()?;
        sync_parent_dir(&target)
    };
    copy().inspect_err(|_| {
        let _ = std::fs::remove_file(&target);
    })?;
    Ok(target)
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

    #[test]
    fn a_torn_last_line_is_cut_and_kept_aside() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("dl.jsonl");
        std::fs::write(&p, b"{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        let f = open_append(&p).unwrap();
        assert_eq!(cut_torn_line(&f, &p).unwrap(), 16);
        use std::io::Write as _;
        (&f).write_all(b"{\"d\":4}\n").unwrap();
        assert_eq!(
            std::fs::read(&p).unwrap(),
            b"{\"a\":1}\n{\"b\":2}\n{\"d\":4}\n".to_vec()
        );
        let torn: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".torn-"))
            .collect();
        assert_eq!(torn.len(), 1);
        assert_eq!(std::fs::read(&torn[0]).unwrap(), b"{\"c\":".to_vec());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&torn[0]), 0o600);
        // Whole lines, or nothing at all: untouched.
        assert_eq!(cut_torn_line(&f, &p).unwrap(), 24);
        let empty = t.path().join("empty.jsonl");
        let f = open_append(&empty).unwrap();
        assert_eq!(cut_torn_line(&f, &empty).unwrap(), 0);
        // A single line without its newline: all of it goes.
        std::fs::write(&empty, b"{\"x\"").unwrap();
        assert_eq!(cut_torn_line(&f, &empty).unwrap(), 0);
        assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
    }
}
