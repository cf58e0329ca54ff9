//! Files that hold calls — recordings and traces — readable by the server's
//! own user only: folders 0700, files 0600, whatever the umask says. What a
//! caller said must not be one `cat` away for every account on the host.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (and any missing parents) private. A folder that already
/// exists is left as its owner made it: it may be shared on purpose (a
/// volume, `/tmp`), and the files in it are private anyway.
pub(crate) fn create_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates (or truncates) `path` for writing, private, in a private folder.
pub(crate) fn create(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_dir(dir)?;
    }
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // A file left behind by an earlier run keeps the mode it was made with.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Writes `bytes` to `path` whole or not at all (readers may look while it
/// is written): a private temporary file beside it, then a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("part");
    let mut f = create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_and_folders_are_the_owners_alone() {
        let root = std::env::temp_dir().join(format!("callbox-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        // A folder made beforehand stays as it was; a file left loose by an
        // earlier run is tightened when written again.
        std::fs::create_dir_all(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let loose = root.join("old.json");
        std::fs::write(&loose, "x").unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&loose, b"{}").unwrap();
        assert_eq!(mode(&root), 0o755);
        assert_eq!(mode(&loose), 0o600);
        let nested = root.join("a/b/c.wav");
        drop(create(&nested).unwrap());
        assert_eq!(mode(&nested), 0o600);
        assert_eq!(mode(&root.join("a")), 0o700);
        assert_eq!(mode(&root.join("a/b")), 0o700);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
