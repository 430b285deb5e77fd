//! Tests of the `fs` store against a temporary directory.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use bytes::Bytes;
use md5::{Digest, Md5};

use super::FsStore;
use crate::storage::{
    encode_tagging, ErrorCode, ErrorKind, Head, ObjectBody, ObjectMeta, StorageError,
};

/// A store in `<tempdir>/store`, set up; the tempdir around it shows anything written outside.
async fn store() -> (tempfile::TempDir, FsStore) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = FsStore::new(
        "local",
        "local",
        dir.path().join("store"),
        std::time::Duration::ZERO,
    );
    store.check().await.expect("the store sets itself up");
    (dir, store)
}

fn md5_b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(data))
}

fn md5_hex(data: &[u8]) -> String {
    super::disk::hex(&Md5::digest(data))
}

fn meta() -> ObjectMeta {
    ObjectMeta {
        content_type: Some("text/plain".into()),
        cache_control: Some("no-cache".into()),
        content_disposition: Some("inline".into()),
        content_encoding: Some("identity".into()),
        user: HashMap::from([("ferry-source-version-id".into(), "v1".into())]),
    }
}

async fn put(store: &FsStore, key: &str, data: &[u8]) -> Result<Option<String>, StorageError> {
    let written = store
        .put(
            key,
            Bytes::copy_from_slice(data),
            &md5_b64(data),
            &ObjectMeta::default(),
            None,
        )
        .await?;
    Ok(written.version_id)
}

async fn read_all(mut body: ObjectBody) -> Vec<u8> {
    let mut all = Vec::new();
    while let Some(chunk) = body.chunk().await.expect("a chunk") {
        assert!(!chunk.is_empty() && chunk.len() <= super::READ_CHUNK);
        all.extend_from_slice(&chunk);
    }
    all
}

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("readable") {
            let path = entry.expect("an entry").path();
            let rel = path.strip_prefix(base).expect("under base");
            out.push(rel.display().to_string());
            if path.is_dir() && !path.is_symlink() {
                walk(base, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[tokio::test]
async fn put_get_head_tags_list_round_trip() {
    let (_dir, store) = store().await;
    assert!(!store.is_versioned().await.unwrap());
    // Over two read chunks, so the body comes in pieces.
    let data: Vec<u8> = (0..(super::READ_CHUNK + 1000)).map(|i| i as u8).collect();
    let tags = vec![("team".to_string(), "a b&c".to_string())];
    let written = store
        .put(
            "docs/2024/report.txt",
            Bytes::from(data.clone()),
            &md5_b64(&data),
            &meta(),
            encode_tagging(&tags),
        )
        .await
        .unwrap();
    assert_eq!(written.etag.as_deref(), Some(md5_hex(&data).as_str()));
    let version = written.version_id.expect("a version id");
    put(&store, "docs/other", b"x").await.unwrap();
    put(&store, "top", b"").await.unwrap();

    // The data is browsable where the key says; the sidecar is beside it under .ferry.
    let root = store.root();
    assert_eq!(
        std::fs::read(root.join("docs/2024/report.txt")).unwrap(),
        data
    );
    assert!(root.join(".ferry/meta/docs/2024/report.txt.json").is_file());

    let Head::Object(head) = store.head("docs/2024/report.txt", None).await.unwrap() else {
        panic!("the object is there");
    };
    assert_eq!(head.size, data.len() as u64);
    assert_eq!(head.version_id.as_deref(), Some(version.as_str()));
    assert_eq!(head.etag, Some(md5_hex(&data)));
    assert_eq!(head.meta, meta());
    assert_eq!(head.tag_count, 1);
    assert!(head.last_modified_ms > 0);

    let (got, body) = store
        .get("docs/2024/report.txt", Some(&version))
        .await
        .unwrap();
    assert_eq!(got.meta, meta());
    assert_eq!(read_all(body).await, data);
    assert_eq!(
        store
            .tags("docs/2024/report.txt", Some(&version))
            .await
            .unwrap(),
        tags
    );
    let (_, body) = store.get("top", None).await.unwrap();
    assert!(read_all(body).await.is_empty());

    let listed = store.list_current("").await.unwrap();
    let keys: Vec<&str> = listed.iter().map(|l| l.key.as_str()).collect();
    assert_eq!(keys, ["docs/2024/report.txt", "docs/other", "top"]);
    assert!(listed.iter().all(|l| l.is_latest && l.version_id.is_some()));
    assert_eq!(listed[0].version_id.as_deref(), Some(version.as_str()));
    assert_eq!(listed[0].size, data.len() as u64);
    let under: Vec<String> = store
        .list_versions("docs/2")
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .collect();
    assert_eq!(under, ["docs/2024/report.txt"]);
    let versions = store.key_versions("docs/other").await.unwrap();
    assert_eq!(versions.len(), 1);
    assert!(store.key_versions("docs").await.unwrap().is_empty());
    assert_eq!(store.first_part_size("top", None).await.unwrap(), None);
}

#[tokio::test]
async fn multipart_round_trip_with_s3_etag() {
    let (_dir, store) = store().await;
    let parts: Vec<Vec<u8>> = vec![vec![1; 3000], vec![2; 3000], vec![3; 10]];
    let id = store
        .create_multipart(
            "big/object",
            &meta(),
            encode_tagging(&[("k".into(), "v".into())]),
        )
        .await
        .unwrap();
    let mut etags = Vec::new();
    // Parts may arrive in any order.
    for n in [2, 1, 3] {
        let data = &parts[n - 1];
        let etag = store
            .upload_part(
                "big/object",
                &id,
                n as i32,
                Bytes::from(data.clone()),
                &md5_b64(data),
            )
            .await
            .unwrap();
        assert_eq!(etag, md5_hex(data));
        etags.push((n as i32, etag));
    }
    etags.sort();
    let mut wrong = etags.clone();
    wrong[1].1 = md5_hex(b"something else");
    let refused = store
        .complete_multipart("big/object", &id, &wrong)
        .await
        .unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Permanent);
    assert!(refused.is(ErrorCode::InvalidPart), "{refused}");

    let written = store
        .complete_multipart("big/object", &id, &etags)
        .await
        .unwrap();
    let digests: Vec<u8> = parts.iter().flat_map(|p| Md5::digest(p).to_vec()).collect();
    let expected = format!("{}-3", md5_hex(&digests));
    assert_eq!(written.etag.as_deref(), Some(expected.as_str()));
    let Head::Object(head) = store
        .head("big/object", written.version_id.as_deref())
        .await
        .unwrap()
    else {
        panic!("the completed object is there");
    };
    assert_eq!(head.etag.as_deref(), Some(expected.as_str()));
    assert_eq!(head.size, 6010);
    assert_eq!(head.tag_count, 1);
    assert_eq!(
        store.first_part_size("big/object", None).await.unwrap(),
        Some(3000)
    );
    let (_, body) = store.get("big/object", None).await.unwrap();
    assert_eq!(read_all(body).await, parts.concat());
    // The staging directory is gone; the upload cannot be completed twice.
    assert!(tree(&store.root().join(".ferry/uploads")).is_empty());
    let again = store
        .complete_multipart("big/object", &id, &etags)
        .await
        .unwrap_err();
    assert_eq!(again.kind, ErrorKind::NotFound);

    // Abort removes an upload and its parts; ids that are not ours name no upload.
    let id = store
        .create_multipart("other", &ObjectMeta::default(), None)
        .await
        .unwrap();
    store
        .upload_part(
            "other",
            &id,
            1,
            Bytes::from_static(b"abc"),
            &md5_b64(b"abc"),
        )
        .await
        .unwrap();
    store.abort_multipart("other", &id).await.unwrap();
    assert!(tree(&store.root().join(".ferry/uploads")).is_empty());
    for bad in [id.as_str(), "../../tmp", ""] {
        let e = store
            .upload_part(
                "other",
                bad,
                1,
                Bytes::from_static(b"abc"),
                &md5_b64(b"abc"),
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound, "{bad:?}: {e}");
    }
    assert_eq!(
        store.abort_multipart("other", &id).await.unwrap_err().kind,
        ErrorKind::NotFound
    );
}

#[tokio::test]
async fn open_uploads_are_capped_until_one_ends() {
    let (_dir, store) = store().await;
    let cap = super::multipart::MAX_OPEN_UPLOADS;
    let mut ids = Vec::new();
    for i in 0..cap {
        let key = format!("u/{i}");
        let id = store
            .create_multipart(&key, &ObjectMeta::default(), None)
            .await
            .unwrap();
        ids.push((key, id));
    }
    let refused = store
        .create_multipart("u/more", &ObjectMeta::default(), None)
        .await
        .unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Transient, "{refused}");
    assert!(refused.is(ErrorCode::SlowDown), "{refused}");
    let (key, id) = &ids[0];
    store.abort_multipart(key, id).await.unwrap();
    store
        .create_multipart("u/more", &ObjectMeta::default(), None)
        .await
        .expect("room again once an upload ended");
}

#[tokio::test]
async fn staged_part_bytes_are_capped_and_counted_across_restarts() {
    let (dir, store) = store().await;
    store.limit_staged(100);
    let part = |store: &FsStore, id: &str, n: i32, len: usize| {
        let (store, id) = (store.clone(), id.to_string());
        async move {
            let body = vec![n as u8; len];
            store
                .upload_part("k", &id, n, Bytes::from(body.clone()), &md5_b64(&body))
                .await
        }
    };
    let id = store
        .create_multipart("k", &ObjectMeta::default(), None)
        .await
        .unwrap();
    part(&store, &id, 1, 60).await.unwrap();
    let refused = part(&store, &id, 2, 60).await.unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Transient, "{refused}");
    assert!(
        refused.message.contains("SlowDown") && refused.message.contains("ingest.max_staged"),
        "{refused}"
    );
    assert!(refused.is(ErrorCode::SlowDown), "{refused}");
    assert_eq!(store.staged_bytes(), 60, "a refused part takes nothing");
    // A part sent again replaces the one before: only the difference counts.
    part(&store, &id, 1, 90).await.unwrap();
    part(&store, &id, 2, 10).await.unwrap();
    assert_eq!(store.staged_bytes(), 100);
    // A restart counts what is on disk.
    let again = FsStore::new(
        "local",
        "local",
        dir.path().join("store"),
        std::time::Duration::ZERO,
    );
    again.check().await.unwrap();
    assert_eq!(again.staged_bytes(), 100);
    again.abort_multipart("k", &id).await.unwrap();
    assert_eq!(again.staged_bytes(), 0);
    // Completing an upload gives its room back too.
    again.limit_staged(100);
    let id = again
        .create_multipart("k", &ObjectMeta::default(), None)
        .await
        .unwrap();
    let etag = part(&again, &id, 1, 100).await.unwrap();
    again
        .complete_multipart("k", &id, &[(1, etag)])
        .await
        .unwrap();
    assert_eq!(again.staged_bytes(), 0);
}

#[tokio::test]
async fn every_write_has_a_version_and_deletes_can_name_it() {
    let (_dir, store) = store().await;
    let v1 = put(&store, "a/b/c", b"one").await.unwrap().unwrap();
    let v2 = put(&store, "a/b/c", b"two").await.unwrap().unwrap();
    assert_ne!(v1, v2);
    assert!(matches!(
        store.head("a/b/c", Some(&v1)).await.unwrap(),
        Head::Missing
    ));
    let e = store.get("a/b/c", Some(&v1)).await.err().expect("refused");
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains(&v2), "{e}");
    assert_eq!(
        store.tags("a/b/c", Some(&v1)).await.unwrap_err().kind,
        ErrorKind::NotFound
    );
    // Deleting the old version leaves the new one alone.
    let e = store.delete_version("a/b/c", Some(&v1)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(matches!(
        store.head("a/b/c", Some(&v2)).await.unwrap(),
        Head::Object(_)
    ));
    store.delete_version("a/b/c", Some(&v2)).await.unwrap();
    assert!(matches!(
        store.head("a/b/c", None).await.unwrap(),
        Head::Missing
    ));
    // Nothing left: not even the directories the key made.
    assert_eq!(left_in(store.root()), tree_of_empty_store());
    // Deleting what is not there succeeds; a delete marker is no version.
    store.delete_version("a/b/c", None).await.unwrap();
    put(&store, "x", b"x").await.unwrap();
    let marker = store.put_delete_marker("x").await.unwrap();
    assert!(marker.version_id.is_none() && marker.etag.is_none());
    assert!(store.list_versions("").await.unwrap().is_empty());
    assert!(store.key_versions("x").await.unwrap().is_empty());
}

/// The tree under `root` but the store's own clock file: what writes and deletes left.
fn left_in(root: &Path) -> Vec<String> {
    let mut left = tree(root);
    left.retain(|p| p != ".ferry/clock");
    left
}

fn tree_of_empty_store() -> Vec<String> {
    [".ferry", ".ferry/meta", ".ferry/tmp", ".ferry/uploads"]
        .map(String::from)
        .to_vec()
}

#[tokio::test]
async fn a_wrong_content_md5_is_refused_and_nothing_is_written() {
    let (_dir, store) = store().await;
    let e = store
        .put(
            "k",
            Bytes::from_static(b"data"),
            &md5_b64(b"other"),
            &ObjectMeta::default(),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Transient);
    assert!(e.is(ErrorCode::BadDigest), "{e}");
    let e = store
        .put(
            "k",
            Bytes::from_static(b"data"),
            "not base64!",
            &ObjectMeta::default(),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent);
    let id = store
        .create_multipart("k", &ObjectMeta::default(), None)
        .await
        .unwrap();
    let e = store
        .upload_part("k", &id, 1, Bytes::from_static(b"data"), &md5_b64(b"other"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Transient);
    store.abort_multipart("k", &id).await.unwrap();
    assert_eq!(left_in(store.root()), tree_of_empty_store());
}

#[tokio::test]
async fn keys_that_would_leave_the_root_are_refused_and_nothing_is_created_outside() {
    let (dir, store) = store().await;
    let long_component = format!("{}/x", "a".repeat(256));
    let long_key = "a/".repeat(513);
    let refused = [
        "",
        "/etc/x",
        "../x",
        "../../x",
        "a/../../b",
        "a/..",
        "./a",
        "a//b",
        "a/",
        "a\0b",
        "a\u{1}b",
        ".ferry/meta/x",
        long_component.as_str(),
        long_key.trim_end_matches('/'),
    ];
    for key in refused {
        let e = put(&store, key, b"x").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent, "{key:?}: {e}");
        assert!(e.message.contains("cannot be stored"), "{key:?}: {e}");
        let e = store.head(key, None).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent, "{key:?}: {e}");
        let e = store.delete_version(key, None).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent, "{key:?}: {e}");
        let e = store
            .create_multipart(key, &ObjectMeta::default(), None)
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent, "{key:?}: {e}");
    }
    assert_eq!(
        tree(dir.path())
            .iter()
            .filter(|p| !p.starts_with("store"))
            .count(),
        0
    );
    assert_eq!(left_in(store.root()), tree_of_empty_store());
}

#[tokio::test]
async fn links_inside_the_root_are_not_followed() {
    let (dir, store) = store().await;
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, store.root().join("link")).unwrap();
    let e = put(&store, "link/x", b"x").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("symbolic link"), "{e}");
    assert!(tree(&outside).is_empty());
    // Nor is anything deleted through the link.
    std::fs::write(outside.join("x"), b"not ours").unwrap();
    store.delete_version("link/x", None).await.unwrap();
    assert_eq!(tree(&outside), ["x"]);
    std::fs::remove_file(outside.join("x")).unwrap();
    // A link where an object's data should be is no object.
    put(&store, "real", b"secret").await.unwrap();
    std::fs::write(outside.join("file"), b"secret").unwrap();
    std::fs::remove_file(store.root().join("real")).unwrap();
    std::os::unix::fs::symlink(outside.join("file"), store.root().join("real")).unwrap();
    assert!(matches!(
        store.head("real", None).await.unwrap(),
        Head::Missing
    ));
    assert!(store.get("real", None).await.is_err());
    assert!(store.list_current("").await.unwrap().is_empty());
}

#[tokio::test]
async fn keys_that_collide_with_existing_objects_are_refused() {
    let (_dir, store) = store().await;
    put(&store, "a", b"file").await.unwrap();
    let e = put(&store, "a/b", b"x").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("\"a\""), "{e}");

    put(&store, "c/d/e", b"x").await.unwrap();
    let e = put(&store, "c", b"x").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("\"c/d/e\""), "{e}");
    let id = store
        .create_multipart("c/d", &ObjectMeta::default(), None)
        .await
        .unwrap();
    let etag = store
        .upload_part("c/d", &id, 1, Bytes::from_static(b"p"), &md5_b64(b"p"))
        .await
        .unwrap();
    let e = store
        .complete_multipart("c/d", &id, &[(1, etag)])
        .await
        .unwrap_err();
    assert!(e.message.contains("\"c/d/e\""), "{e}");
    store.abort_multipart("c/d", &id).await.unwrap();

    // The sidecar of "m" is m.json: a key under "m.json/" collides with it there.
    put(&store, "m", b"x").await.unwrap();
    let e = put(&store, "m.json/n", b"x").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("\"m\""), "{e}");

    // Once the colliding object is gone, the key can be written.
    store.delete_version("c/d/e", None).await.unwrap();
    put(&store, "c", b"now a file").await.unwrap();
    let keys: Vec<String> = store
        .list_current("")
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .collect();
    assert_eq!(keys, ["a", "c", "m"]);
}

/// Sets the modification time of `path` to `secs` after the epoch.
fn set_mtime(path: &Path, secs: u64) {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(at))
        .expect("set the modification time");
}

#[tokio::test]
async fn planted_sidecars_are_never_followed_or_read_unbounded() {
    let (_dir, store) = store().await;
    let meta = store.root().join(".ferry/meta");
    // A link to an endless device, a FIFO nobody writes, a file far larger than a record.
    put(&store, "link", b"l").await.unwrap();
    std::fs::remove_file(meta.join("link.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", meta.join("link.json")).unwrap();
    put(&store, "fifo", b"f").await.unwrap();
    std::fs::remove_file(meta.join("fifo.json")).unwrap();
    let fifo =
        std::ffi::CString::new(meta.join("fifo.json").as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    put(&store, "huge", b"h").await.unwrap();
    std::fs::write(meta.join("huge.json"), vec![b' '; 2 << 20]).unwrap();
    for key in ["link", "fifo", "huge"] {
        let head = tokio::time::timeout(std::time::Duration::from_secs(10), store.head(key, None))
            .await
            .unwrap_or_else(|_| panic!("{key}: the head hung"));
        let Head::Object(h) = head.unwrap() else {
            panic!("{key}: the data file is still an object");
        };
        assert_eq!(
            h.meta,
            ObjectMeta::default(),
            "{key}: no metadata taken from it"
        );
    }
}

#[tokio::test]
async fn a_data_file_changed_behind_the_sidecar_is_a_new_ordinary_version() {
    let (_dir, store) = store().await;
    let v1 = put(&store, "k", b"original").await.unwrap();
    // Same size, new content (and a modification time that surely differs: file-system
    // clocks may tick coarser than two writes in a test).
    let path = store.root().join("k");
    std::fs::write(&path, b"tampered").unwrap();
    set_mtime(&path, 1_000_000);
    let Head::Object(h) = store.head("k", None).await.unwrap() else {
        panic!("the changed file is an object");
    };
    assert_ne!(h.version_id, v1, "a new version");
    assert_eq!(h.etag, None, "not read yet");
    assert_eq!(
        h.meta,
        ObjectMeta::default(),
        "ferry's metadata was for the old bytes"
    );
    assert_eq!(
        store
            .get("k", v1.as_deref())
            .await
            .err()
            .expect("gone")
            .kind,
        ErrorKind::NotFound
    );
    let (_, body) = store.get("k", h.version_id.as_deref()).await.unwrap();
    assert_eq!(read_all(body).await, b"tampered");
    // The read recorded its MD5: the same version, now with an ETag.
    let Head::Object(after) = store.head("k", None).await.unwrap() else {
        panic!("still there");
    };
    assert_eq!(after.version_id, h.version_id);
    assert_eq!(after.etag.as_deref(), Some(md5_hex(b"tampered").as_str()));
    // Writing it again makes it ferry's object.
    let v3 = put(&store, "k", b"copied again").await.unwrap();
    let (head, body) = store.get("k", None).await.unwrap();
    assert_eq!(head.version_id, v3);
    assert_eq!(read_all(body).await, b"copied again");
}

#[tokio::test]
async fn ordinary_files_are_objects_once_stable() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let root = dir.path().join("store");
    let store = FsStore::new(
        "local",
        "local",
        root.clone(),
        std::time::Duration::from_secs(60),
    );
    store.check().await.unwrap();
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::write(root.join("a/b/old.txt"), b"settled").unwrap();
    set_mtime(&root.join("a/b/old.txt"), 1_000_000);
    std::fs::write(root.join("a/new.txt"), b"still being written").unwrap();
    std::os::unix::fs::symlink(root.join("a/b/old.txt"), root.join("a/link")).unwrap();
    let fifo = std::ffi::CString::new(root.join("a/fifo").to_string_lossy().as_bytes()).unwrap();
    // SAFETY: a valid C string naming a path in the test's own directory.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let listed = store.list_current("").await.unwrap();
    let keys: Vec<&str> = listed.iter().map(|l| l.key.as_str()).collect();
    assert_eq!(
        keys,
        ["a/b/old.txt"],
        "links, FIFOs and unsettled files wait or are skipped"
    );
    assert_eq!(listed[0].size, 7);
    assert_eq!(listed[0].etag, None);
    assert_eq!(listed[0].last_modified_ms, 1_000_000_000);
    // A HEAD or GET of the unsettled file finds it (only listings wait).
    assert!(matches!(
        store.head("a/new.txt", None).await.unwrap(),
        Head::Object(_)
    ));
    assert!(matches!(
        store.head("a/fifo", None).await.unwrap(),
        Head::Missing
    ));
    assert!(store.get("a/fifo", None).await.is_err());
    // Deleting exactly the listed version removes the file and prunes nothing still used.
    store
        .delete_version("a/b/old.txt", listed[0].version_id.as_deref())
        .await
        .unwrap();
    assert!(
        !root.join("a/b").exists(),
        "the emptied directory is pruned"
    );
    assert!(root.join("a/new.txt").exists());
    // A version that is not the file's current one is not deleted.
    let e = store
        .delete_version("a/new.txt", Some("0000000000000000-1-1"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(root.join("a/new.txt").exists());
}

#[tokio::test]
async fn a_file_written_while_it_is_read_fails_the_read() {
    let (_dir, store) = store().await;
    let path = store.root().join("growing");
    let big = vec![7u8; 3 * super::READ_CHUNK];
    std::fs::write(&path, &big).unwrap();
    set_mtime(&path, 1_000_000);
    let (_, mut body) = store.get("growing", None).await.unwrap();
    let first = body.chunk().await.unwrap().expect("a first piece");
    assert_eq!(first.len(), super::READ_CHUNK);
    // Another program appends while ferry reads.
    use std::io::Write;
    std::fs::File::options()
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(b"more"))
        .unwrap();
    let mut failed = None;
    loop {
        match body.chunk().await {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let e = failed.expect("the read fails instead of mixing two contents");
    assert_eq!(e.kind, ErrorKind::Transient);
    assert!(e.message.contains("changed while it was read"), "{e}");
}

#[tokio::test]
async fn a_failed_overwrite_leaves_the_previous_object() {
    let (_dir, store) = store().await;
    let v1 = put(&store, "d/k", b"first").await.unwrap();
    // The state a crash (or a failed rename) between a write's two renames leaves: the new
    // sidecar in place, naming the old object as its prior, and the old data file.
    let comps: Vec<String> = vec!["d".into(), "k".into()];
    let layout = &store.inner.layout;
    let old = super::objects::read_sidecar(layout, &comps)
        .unwrap()
        .unwrap();
    let mut temp = super::disk::Temp::create(&layout.tmp().unwrap()).unwrap();
    temp.write(b"second").unwrap();
    let data = temp.sync().unwrap();
    let mut next = super::meta::Sidecar::new(
        "next".into(),
        md5_hex(b"second"),
        &data,
        Vec::new(),
        Default::default(),
    );
    next.prior = Some(Box::new(old));
    std::fs::write(
        layout.path(super::disk::Tree::Meta, &comps),
        serde_json::to_vec(&next).unwrap(),
    )
    .unwrap();
    drop(temp);
    let (head, body) = store.get("d/k", None).await.unwrap();
    assert_eq!(head.version_id, v1, "the previous object, as it was");
    assert_eq!(read_all(body).await, b"first");
    let listed = store.list_current("").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].version_id, v1);
}

#[tokio::test]
async fn check_creates_the_directory_or_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(
        "local",
        "local",
        dir.path().join("a/b"),
        std::time::Duration::ZERO,
    );
    store.check().await.unwrap();
    assert!(dir.path().join("a/b/.ferry/tmp").is_dir());
    std::fs::write(dir.path().join("file"), b"x").unwrap();
    let blocked = FsStore::new(
        "local",
        "local",
        dir.path().join("file/sub"),
        std::time::Duration::ZERO,
    );
    let e = blocked.check().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(e.message.contains("file/sub"), "{e}");
    // A store whose directory is gone is a configuration problem, not a missing object.
    let e = blocked.get("k", None).await.err().expect("refused");
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
}

/// Feeds `chunks` (then, if `abort`, an abort) through a body channel.
fn body_of(chunks: &[&'static [u8]], abort: bool) -> crate::storage::BodyChunks {
    let (tx, rx) = tokio::sync::mpsc::channel(chunks.len() + 1);
    for chunk in chunks {
        tx.try_send(Ok(Bytes::from_static(chunk))).expect("room");
    }
    if abort {
        tx.try_send(Err(crate::storage::BodyAborted("test".into())))
            .expect("room");
    }
    rx
}

#[tokio::test]
async fn a_streamed_put_is_checked_and_an_aborted_or_short_one_leaves_nothing() {
    let (_dir, fs) = store().await;
    let written = fs
        .put_stream(
            "s",
            10,
            Some(&md5_b64(b"0123456789")),
            body_of(&[b"0123", b"456", b"789"], false),
            &meta(),
            None,
        )
        .await
        .expect("a whole stream is written");
    assert_eq!(
        written.etag.as_deref(),
        Some(md5_hex(b"0123456789").as_str())
    );
    let (_, body) = fs.get("s", None).await.unwrap();
    assert_eq!(read_all(body).await, b"0123456789");

    let (_dir, store) = store().await;
    let md5 = md5_b64(b"0123456789");
    let cases = [
        (body_of(&[b"0123", b"456"], true), "aborted"),
        (body_of(&[b"0123", b"456"], false), "IncompleteBody"),
        (body_of(&[b"0123", b"456", b"78x"], false), "BadDigest"),
    ];
    for (body, named) in cases {
        let e = store
            .put_stream("s", 10, Some(&md5), body, &ObjectMeta::default(), None)
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Transient, "{e}");
        assert!(e.message.contains(named), "{named}: {e}");
    }
    assert_eq!(left_in(store.root()), tree_of_empty_store());
}

/// What the concurrency tests write under one prefix: keys in one directory and in a few
/// subdirectories, so writes and deletes share (and prune) directories all the time.
fn crowded_key(i: usize) -> String {
    match i % 4 {
        0 | 1 => format!("round0/f{i:06}"),
        n => format!("round0/sub{}/deeper/f{i:06}", n + i % 3),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_deleters_and_listings_on_one_prefix_lose_nothing() {
    use std::sync::Arc;
    const WRITERS: usize = 16;
    const PER_WRITER: usize = 150;
    let (_dir, store) = store().await;
    let (acked, mut to_delete) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let listing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let lister = {
        let (store, listing) = (store.clone(), listing.clone());
        tokio::spawn(async move {
            let mut lists = 0;
            while listing.load(std::sync::atomic::Ordering::Relaxed) {
                store
                    .list_current("round0/")
                    .await
                    .expect("a listing never fails");
                lists += 1;
            }
            lists
        })
    };
    let deleter = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut deletes = Vec::new();
            while let Some((key, version)) = to_delete.recv().await {
                let store = store.clone();
                deletes.push(tokio::spawn(async move {
                    store
                        .delete_version(&key, Some(&version))
                        .await
                        .map_err(|e| format!("{key} {version}: {e}"))?;
                    match store.head(&key, None).await {
                        Ok(Head::Missing) => Ok(()),
                        other => Err(format!("{key}: still there after its delete: {other:?}")),
                    }
                }));
            }
            let mut failures = Vec::new();
            for delete in deletes {
                if let Err(e) = delete.await.expect("the delete task") {
                    failures.push(e);
                }
            }
            failures
        })
    };
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (store, acked) = (store.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for n in 0..PER_WRITER {
                let key = crowded_key(n * WRITERS + w);
                // Every key is written twice (an overwrite), and its second version deleted
                // by exactly that version, as the garbage collector does.
                put(&store, &key, b"first")
                    .await
                    .map_err(|e| format!("{key}: {e}"))?;
                let second = put(&store, &key, key.as_bytes())
                    .await
                    .map_err(|e| format!("{key}: {e}"))?
                    .expect("a version id");
                let (head, body) = store
                    .get(&key, Some(&second))
                    .await
                    .map_err(|e| format!("{key}: {e}"))?;
                assert_eq!(head.size, key.len() as u64);
                assert_eq!(read_all(body).await, key.as_bytes());
                acked.send((key, second)).expect("the deleter listens");
            }
            Ok::<(), String>(())
        }));
    }
    drop(acked);
    for writer in writers {
        writer
            .await
            .expect("the writer task")
            .expect("every write is acknowledged");
    }
    let failures = deleter.await.expect("the deleter task");
    listing.store(false, std::sync::atomic::Ordering::Relaxed);
    let lists = lister.await.expect("the lister task");
    assert!(
        failures.is_empty(),
        "{} deletes failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(lists > 0);
    assert!(store.list_current("").await.unwrap().is_empty());
    assert_eq!(
        left_in(store.root()),
        tree_of_empty_store(),
        "no data file, sidecar or directory left"
    );
}

mod interleavings {
    //! Property tests: rounds of operations on keys that share directories, each round run
    //! concurrently, must leave exactly what a sequential model says.

    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    const KEYS: [&str; 6] = ["a/b/c", "a/b/d", "a/e", "a/f/g/h", "i", "a/f/j"];

    /// How often a round repeats each operation, so the operations of a round overlap.
    const REPEAT: usize = 8;

    #[derive(Debug, Clone)]
    enum Op {
        /// Writes the key `REPEAT` times (overwrites).
        Put(u8),
        /// Deletes the key.
        Delete,
        /// Deletes exactly the version the model knows, as the garbage collector does.
        DeleteListed,
        /// Writes the key and deletes that version, `REPEAT` times: directories come and go.
        Churn(u8),
        List,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => any::<u8>().prop_map(Op::Put),
            1 => Just(Op::Delete),
            2 => Just(Op::DeleteListed),
            3 => any::<u8>().prop_map(Op::Churn),
            1 => Just(Op::List),
        ]
    }

    async fn put_repeatedly(
        store: &FsStore,
        key: &str,
        data: &[u8],
    ) -> Result<Option<String>, StorageError> {
        let mut version = None;
        for _ in 0..REPEAT {
            version = put(store, key, data).await?;
        }
        Ok(version)
    }

    async fn churn(store: &FsStore, key: &str, data: &[u8]) -> Result<(), StorageError> {
        for _ in 0..REPEAT {
            let version = put(store, key, data).await?;
            store.delete_version(key, version.as_deref()).await?;
        }
        Ok(())
    }

    /// Each round gives every key at most one operation (so its outcome does not depend on
    /// the order the round's operations interleave in).
    fn rounds() -> impl Strategy<Value = Vec<Vec<Option<Op>>>> {
        prop::collection::vec(
            prop::collection::vec(prop::option::of(op()), KEYS.len()),
            1..12,
        )
    }

    async fn run(rounds: Vec<Vec<Option<Op>>>) -> Result<(), TestCaseError> {
        let (_dir, store) = store().await;
        let mut model: BTreeMap<&str, (Vec<u8>, Option<String>)> = BTreeMap::new();
        for round in rounds {
            let mut tasks = Vec::new();
            for (key, op) in KEYS.iter().zip(round) {
                let Some(op) = op else { continue };
                let store = store.clone();
                let known = model.get(key).and_then(|(_, v)| v.clone());
                tasks.push(tokio::spawn(async move {
                    let outcome = match op {
                        Op::Put(byte) => {
                            let data = vec![byte; 1 + byte as usize % 7];
                            put_repeatedly(&store, key, &data)
                                .await
                                .map(|v| Some((data, v)))
                        }
                        Op::Churn(byte) => churn(&store, key, &[byte]).await.map(|()| None),
                        Op::Delete => store.delete_version(key, None).await.map(|()| None),
                        Op::DeleteListed => match known {
                            Some(v) => store.delete_version(key, Some(&v)).await.map(|()| None),
                            None => Ok(None),
                        },
                        Op::List => store
                            .list_current("a/")
                            .await
                            .map(|_| Some((Vec::new(), None))),
                    };
                    (*key, outcome)
                }));
            }
            for task in tasks {
                let (key, outcome) = task.await.expect("the task");
                match outcome {
                    Ok(Some((data, Some(version)))) => {
                        model.insert(key, (data, Some(version)));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        model.remove(key);
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("{key}: {e}"))),
                }
            }
            let listed: BTreeMap<String, Option<String>> = store
                .list_current("")
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?
                .into_iter()
                .map(|l| (l.key, l.version_id))
                .collect();
            let expected: BTreeMap<String, Option<String>> = model
                .iter()
                .map(|(k, (_, v))| (k.to_string(), v.clone()))
                .collect();
            prop_assert_eq!(listed, expected);
            for (key, (data, version)) in &model {
                let (head, body) = store
                    .get(key, None)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("{key}: {e}")))?;
                prop_assert_eq!(&head.version_id, version);
                prop_assert_eq!(&read_all(body).await, data);
            }
        }
        for key in KEYS {
            store
                .delete_version(key, None)
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        prop_assert_eq!(left_in(store.root()), tree_of_empty_store());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn concurrent_rounds_match_the_sequential_model(rounds in rounds()) {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(run(rounds))?;
        }
    }
}

#[tokio::test]
async fn listings_are_in_key_byte_order_a_page_at_a_time() {
    let (_dir, store) = store().await;
    // A directory sorts as its name and a slash: "a.b" < "a/b" < "a0" < "ab".
    let keys = ["ab", "a0", "a/b", "a.b", "a/a/z", "b"];
    for key in keys {
        put(&store, key, key.as_bytes()).await.unwrap();
    }
    let mut expected: Vec<&str> = keys.to_vec();
    expected.sort();
    let listed: Vec<String> = store
        .list_current("")
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .collect();
    assert_eq!(listed, expected);
    for i in 0..2500 {
        put(&store, &format!("many/{i:05}"), b"x").await.unwrap();
    }
    let mut pages = store.pages("many/");
    let mut sizes = Vec::new();
    let mut last = String::new();
    while let Some(page) = pages.next().await.unwrap() {
        sizes.push(page.len());
        for l in page {
            assert!(l.key > last, "{} after {last}", l.key);
            last = l.key;
        }
    }
    assert_eq!(sizes, [1000, 1000, 500]);
    assert_eq!(pages.requests, 3);
}

/// A file in `dir` last modified `age` ago.
fn leftover(dir: &Path, name: &str, age: std::time::Duration) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).expect("dir");
    let path = dir.join(name);
    let file = std::fs::File::create(&path).expect("create");
    file.set_modified(std::time::SystemTime::now() - age)
        .expect("backdate");
    path
}

#[tokio::test]
async fn the_readiness_probe_writes_and_sweeps_nothing() {
    let (dir, store) = store().await;
    let tmp = dir.path().join("store/.ferry/tmp");
    let stale = leftover(
        &tmp,
        "crashed",
        std::time::Duration::from_secs(2 * 24 * 3600),
    );
    for _ in 0..3 {
        store.probe().await.expect("ready");
    }
    let names: Vec<_> = std::fs::read_dir(&tmp)
        .expect("tmp")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("crashed")]);
    assert!(stale.exists());

    std::fs::remove_dir_all(dir.path().join("store")).expect("remove");
    let err = store.probe().await.expect_err("the directory is gone");
    assert!(err.to_string().contains("store"), "{err}");
}

#[tokio::test]
async fn stale_leftovers_are_swept_on_a_timer_and_fresh_ones_kept() {
    let (dir, store) = store().await;
    let root = dir.path().join("store/.ferry");
    let day = std::time::Duration::from_secs(24 * 3600);
    let old_tmp = leftover(&root.join("tmp"), "old", 2 * day);
    let new_tmp = leftover(&root.join("tmp"), "new", std::time::Duration::ZERO);
    let old_upload = leftover(&root.join("uploads"), "abandoned", 8 * day);
    let open_upload = leftover(&root.join("uploads"), "open", day);
    let stores = [crate::storage::Store::Fs(store)]
        .into_iter()
        .collect::<crate::storage::Stores>();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let sweeper =
        tokio::spawn(stores.sweep_every(std::time::Duration::from_millis(20), shutdown.clone()));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    shutdown.cancel();
    sweeper.await.expect("the sweeper stops on shutdown");
    assert!(
        !old_tmp.exists() && !old_upload.exists(),
        "stale leftovers kept"
    );
    assert!(
        new_tmp.exists() && open_upload.exists(),
        "fresh files removed"
    );
}

#[tokio::test]
async fn a_listing_after_a_key_returns_exactly_the_keys_that_sort_after_it() {
    let (_dir, store) = store().await;
    // Directories sort as `name/`: `d.txt` < `d/…` < `d0`.
    let keys = [
        "a", "b/1", "b/2", "b/c/1", "b/c/2", "b/d", "d.txt", "d/x", "d/y/z", "d0", "e",
    ];
    for key in keys {
        put(&store, key, b"x").await.unwrap();
    }
    let mut all = Vec::new();
    for after in std::iter::once("")
        .chain(keys)
        .chain(["b/", "b/c", "b/c/", "c", "zz"])
    {
        let mut pages = store.pages("").after(Some(after).filter(|a| !a.is_empty()));
        let mut got = Vec::new();
        while let Some(page) = pages.next().await.unwrap() {
            got.extend(page.into_iter().map(|l| l.key));
        }
        let expected: Vec<String> = keys
            .iter()
            .filter(|k| **k > after)
            .map(|k| k.to_string())
            .collect();
        assert_eq!(got, expected, "after {after:?}");
        all.push(got.len());
    }
    assert_eq!(all[0], keys.len());
}

/// A directory swapped for a link to elsewhere and back, over and over, while the store
/// reads, writes and lists under it: no operation may ever reach through the link (a check
/// of the path followed by an open by path would, in the moment between the two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_swapped_for_a_link_mid_operation_never_leads_outside() {
    let (dir, store) = store().await;
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    for name in ["k", "only-outside"] {
        std::fs::write(outside.join(name), b"outside!").unwrap();
    }
    put(&store, "d/k", b"inside").await.unwrap();
    let root = store.root().to_path_buf();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, outside) = (stop.clone(), outside.clone());
        std::thread::spawn(move || {
            use std::os::unix::ffi::OsStrExt;
            let c = |p: std::path::PathBuf| std::ffi::CString::new(p.as_os_str().as_bytes());
            let (real, link) = (c(root.join("d")).unwrap(), c(root.join("d.link")).unwrap());
            std::os::unix::fs::symlink(&outside, root.join("d.link")).unwrap();
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || swaps % 2 == 1 {
                // Atomically: `d` becomes the link, `d.link` the directory, and back.
                // SAFETY: valid NUL-terminated paths.
                let ret = unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        real.as_ptr(),
                        libc::AT_FDCWD,
                        link.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                assert_eq!(ret, 0, "{}", std::io::Error::last_os_error());
                swaps += 1;
                std::thread::yield_now();
            }
            swaps
        })
    };
    let mut escaped = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut i = 0;
    while std::time::Instant::now() < deadline {
        i += 1;
        for key in ["d/k", "d/only-outside"] {
            if let Ok((_, mut body)) = store.get(key, None).await {
                if let Ok(Some(chunk)) = body.chunk().await {
                    if chunk.as_ref() == b"outside!" {
                        escaped.push(format!("GET {key}"));
                    }
                }
            }
        }
        let _ = put(&store, &format!("d/new{i}"), b"x").await;
        if let Ok(listed) = store.list_current("d/").await {
            if listed.iter().any(|l| l.key == "d/only-outside") {
                escaped.push("a listing".into());
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 1000, "{swaps} swaps");
    let mut left = tree(&outside);
    left.sort();
    assert_eq!(left, ["k", "only-outside"], "written through the link");
    assert!(
        escaped.is_empty(),
        "{} of {i} rounds reached outside: {:?}",
        escaped.len(),
        &escaped[..escaped.len().min(5)]
    );
}
