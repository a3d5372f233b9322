//! Content checks against the hub's ETags, which name each blob in the cache: an LFS file's
//! ETag is the sha256 of its content, any other file's is git's blob id (the sha1 of
//! `blob <size>\0` and the content). An ETag of another form (a mirror's own) cannot be
//! checked and passes.

use std::io::Read;
use std::path::Path;

use sha1::Sha1;
use sha2::{Digest, Sha256};

/// Whether `path`'s content matches `etag`; the error says how it differs.
pub fn against_etag(path: &Path, etag: &str) -> Result<(), String> {
    let hex = |s: &str| s.chars().all(|c| c.is_ascii_hexdigit());
    let size = std::fs::metadata(path)
        .map_err(|e| format!("cannot read it: {e}"))?
        .len();
    let got = match etag.len() {
        64 if hex(etag) => digest(Sha256::new(), path, &[])?,
        40 if hex(etag) => digest(Sha1::new(), path, format!("blob {size}\0").as_bytes())?,
        _ => return Ok(()),
    };
    if got.eq_ignore_ascii_case(etag) {
        Ok(())
    } else {
        Err(format!(
            "{size} bytes whose {} is {got}, not the hub's {etag}",
            if etag.len() == 64 {
                "sha256"
            } else {
                "git blob id"
            }
        ))
    }
}

/// The hex digest of `prefix` then `path`'s bytes.
fn digest<D: Digest>(mut d: D, path: &Path, prefix: &[u8]) -> Result<String, String> {
    d.update(prefix);
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("cannot read it: {e}"))?;
        if n == 0 {
            break;
        }
        d.update(&buf[..n]);
    }
    Ok(d.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_and_git_blob_ids_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello\n").unwrap();
        // `git hash-object` and `sha256sum` of "hello\n".
        assert!(against_etag(&p, "ce013625030ba8dba906f756967f9e9ca394464a").is_ok());
        assert!(against_etag(
            &p,
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        )
        .is_ok());
        let err = against_etag(&p, "ce013625030ba8dba906f756967f9e9ca394464b").unwrap_err();
        assert!(
            err.contains("6 bytes") && err.contains("git blob id"),
            "{err}"
        );
        assert!(
            against_etag(&p, "not-a-hash").is_ok(),
            "an ETag of another form passes"
        );
    }
}
