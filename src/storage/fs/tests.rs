//! Tests of the `fs` store against a temporary directory.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use bytes::Bytes;
use md5::{Digest, Md5};

use super::FsStore;
use crate::storage::{encode_tagging, ErrorKind, Head, ObjectBody, ObjectMeta, StorageError};

/// A store in `<tempdir>/store`, set up; the tempdir around it shows anything written outside.
async fn store() -> (tempfile::TempDir, FsStore) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = FsStore::new("local", "local", dir.path().join("store"));
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
    assert!(refused.message.contains("InvalidPart"), "{refused}");

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
    assert_eq!(tree(store.root()), tree_of_empty_store());
    // Deleting what is not there succeeds; a delete marker is no version.
    store.delete_version("a/b/c", None).await.unwrap();
    put(&store, "x", b"x").await.unwrap();
    let marker = store.put_delete_marker("x").await.unwrap();
    assert!(marker.version_id.is_none() && marker.etag.is_none());
    assert!(store.list_versions("").await.unwrap().is_empty());
    assert!(store.key_versions("x").await.unwrap().is_empty());
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
    assert!(e.message.contains("BadDigest"), "{e}");
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
    assert_eq!(tree(store.root()), tree_of_empty_store());
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
    assert_eq!(tree(store.root()), tree_of_empty_store());
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

#[tokio::test]
async fn a_data_file_changed_behind_the_sidecar_reads_as_missing() {
    let (_dir, store) = store().await;
    put(&store, "k", b"original").await.unwrap();
    // Same size, new content (and a modification time that surely differs: file-system
    // clocks may tick coarser than two writes in a test).
    let path = store.root().join("k");
    std::fs::write(&path, b"tampered").unwrap();
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(old))
        .unwrap();
    assert!(matches!(
        store.head("k", None).await.unwrap(),
        Head::Missing
    ));
    assert_eq!(
        store.get("k", None).await.err().expect("refused").kind,
        ErrorKind::NotFound
    );
    assert!(store.list_current("").await.unwrap().is_empty());
    // Rewritten in place (same inode, other size): still missing.
    put(&store, "j", b"original").await.unwrap();
    std::fs::write(store.root().join("j"), b"longer content").unwrap();
    assert!(matches!(
        store.head("j", None).await.unwrap(),
        Head::Missing
    ));
    // Writing it again makes it whole.
    put(&store, "k", b"copied again").await.unwrap();
    let (_, body) = store.get("k", None).await.unwrap();
    assert_eq!(read_all(body).await, b"copied again");
    // Data without a sidecar is no object either.
    std::fs::write(store.root().join("stray"), b"x").unwrap();
    assert!(matches!(
        store.head("stray", None).await.unwrap(),
        Head::Missing
    ));
}

#[tokio::test]
async fn check_creates_the_directory_or_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new("local", "local", dir.path().join("a/b"));
    store.check().await.unwrap();
    assert!(dir.path().join("a/b/.ferry/tmp").is_dir());
    std::fs::write(dir.path().join("file"), b"x").unwrap();
    let blocked = FsStore::new("local", "local", dir.path().join("file/sub"));
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
            &md5_b64(b"0123456789"),
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
            .put_stream("s", 10, &md5, body, &ObjectMeta::default(), None)
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Transient, "{e}");
        assert!(e.message.contains(named), "{named}: {e}");
    }
    assert_eq!(tree(store.root()), tree_of_empty_store());
}
