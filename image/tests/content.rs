//! Content store behaviour on a real directory: verification, refusal of
//! bad content, concurrent writers, leases and crash recovery.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bk_image::content::{ContentError, ContentStore, ErrorKind};
use bk_image::digest::{Algorithm, Digest};
use tokio::io::AsyncReadExt;

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

async fn store() -> (tempfile::TempDir, ContentStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path().join("content"))
        .await
        .unwrap();
    (dir, store)
}

#[tokio::test]
async fn writes_verifies_and_reads_back() {
    let (_dir, store) = store().await;
    let data = b"hello content store".to_vec();
    let digest = Digest::sha256_of(&data);

    let mut w = store
        .writer(Some(digest.clone()), Some(data.len() as u64))
        .await
        .unwrap();
    w.write(&data[..5]).await.unwrap();
    w.write(&data[5..]).await.unwrap();
    assert_eq!(w.written(), data.len() as u64);
    let commit = w.commit().await.unwrap();
    assert!(commit.created);
    assert_eq!(commit.info.digest, digest);
    assert_eq!(commit.info.size, data.len() as u64);

    let path = store.root().join("blobs/sha256").join(digest.encoded());
    assert_eq!(store.blob_path(&digest), path);
    assert_eq!(std::fs::read(&path).unwrap(), data);
    // Blobs are read-only, as containerd's.
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o444
    );
    assert!(store.exists(&digest).await.unwrap());
    assert_eq!(store.info(&digest).await.unwrap().size, data.len() as u64);
    assert_eq!(store.read_blob(&digest, 1024).await.unwrap(), data);
    let mut f = store.open_blob(&digest).await.unwrap();
    let mut back = Vec::new();
    f.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, data);
    // Nothing left behind in ingest.
    assert!(entries(&store.root().join("ingest")).is_empty());
}

#[tokio::test]
async fn unverified_writes_are_named_by_their_sha256() {
    let (_dir, store) = store().await;
    let commit = store.write_blob(b"abc".to_vec(), None).await.unwrap();
    assert_eq!(
        commit.info.digest.as_str(),
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let empty = store.write_blob(Vec::new(), None).await.unwrap();
    assert_eq!(empty.info.size, 0);
    assert!(store.exists(&Digest::sha256_of(b"")).await.unwrap());
}

#[tokio::test]
async fn sha512_blobs_are_verified_and_stored_by_algorithm() {
    let (_dir, store) = store().await;
    let data = vec![7u8; 100_000];
    let digest = Digest::of(Algorithm::Sha512, &data);
    let commit = store.write_blob(data.clone(), Some(&digest)).await.unwrap();
    assert_eq!(commit.info.digest, digest);
    assert!(
        store
            .root()
            .join("blobs/sha512")
            .join(digest.encoded())
            .is_file()
    );
    let wrong = Digest::of(Algorithm::Sha512, b"other");
    let err = store.write_blob(data, Some(&wrong)).await.unwrap_err();
    assert!(matches!(err, ContentError::DigestMismatch { .. }), "{err}");
}

#[tokio::test]
async fn digest_mismatch_is_refused_and_deleted() {
    let (_dir, store) = store().await;
    let expected = Digest::sha256_of(b"what the manifest promised");
    let data = b"what the registry sent".to_vec();
    let actual = Digest::sha256_of(&data);
    let err = store.write_blob(data, Some(&expected)).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("unexpected commit digest {actual}, expected {expected}: failed precondition")
    );
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert!(!store.exists(&expected).await.unwrap());
    assert!(!store.exists(&actual).await.unwrap());
    assert!(entries(&store.root().join("ingest")).is_empty());
    assert!(entries(&store.root().join("blobs/sha256")).is_empty());
}

#[tokio::test]
async fn truncated_content_is_refused_and_deleted() {
    let (_dir, store) = store().await;
    let data = vec![1u8; 4096];
    let digest = Digest::sha256_of(&data);

    // The stream ends early.
    let mut w = store
        .writer(Some(digest.clone()), Some(4096))
        .await
        .unwrap();
    w.write(&data[..1000]).await.unwrap();
    let err = w.commit().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "unexpected commit size 1000, expected 4096: failed precondition"
    );
    assert!(!store.exists(&digest).await.unwrap());

    // Without a size, the digest still catches it.
    let mut w = store.writer(Some(digest.clone()), None).await.unwrap();
    w.write(&data[..4095]).await.unwrap();
    let err = w.commit().await.unwrap_err();
    assert!(matches!(err, ContentError::DigestMismatch { .. }), "{err}");

    // A writer dropped half-way leaves nothing anywhere.
    let mut w = store
        .writer(Some(digest.clone()), Some(4096))
        .await
        .unwrap();
    w.write(&data[..2048]).await.unwrap();
    drop(w);
    // The removal runs on a blocking thread; give it a moment.
    for _ in 0..100 {
        if entries(&store.root().join("ingest")).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(entries(&store.root().join("ingest")).is_empty());
    assert!(!store.exists(&digest).await.unwrap());
}

#[tokio::test]
async fn writing_past_the_expected_size_fails_at_once() {
    let (_dir, store) = store().await;
    let mut w = store.writer(None, Some(10)).await.unwrap();
    w.write(vec![0u8; 8]).await.unwrap();
    let err = w.write(vec![0u8; 8]).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "content exceeds expected size 10 (got at least 16 bytes): failed precondition"
    );
    // The writer is unusable afterwards, and its file is gone.
    assert!(matches!(
        w.write(vec![0u8]).await,
        Err(ContentError::WriterBroken)
    ));
    assert!(matches!(w.commit().await, Err(ContentError::WriterBroken)));
    for _ in 0..100 {
        if entries(&store.root().join("ingest")).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(entries(&store.root().join("ingest")).is_empty());
}

#[tokio::test]
async fn nothing_partial_is_ever_visible_while_writing() {
    let (_dir, store) = store().await;
    let data = vec![42u8; 1 << 20];
    let digest = Digest::sha256_of(&data);
    let mut w = store
        .writer(Some(digest.clone()), Some(data.len() as u64))
        .await
        .unwrap();
    for chunk in data.chunks(64 * 1024) {
        w.write(chunk).await.unwrap();
        assert!(!store.exists(&digest).await.unwrap());
        assert!(!store.blob_path(&digest).exists());
    }
    w.commit().await.unwrap();
    assert_eq!(store.info(&digest).await.unwrap().size, data.len() as u64);
}

#[tokio::test]
async fn copy_from_streams_a_reader() {
    let (_dir, store) = store().await;
    let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::sha256_of(&data);
    let mut w = store
        .writer(Some(digest.clone()), Some(data.len() as u64))
        .await
        .unwrap();
    let copied = w.copy_from(&data[..]).await.unwrap();
    assert_eq!(copied, data.len() as u64);
    w.commit().await.unwrap();
    assert_eq!(store.read_blob(&digest, u64::MAX).await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_of_one_digest_agree() {
    let (_dir, store) = store().await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let digest = Digest::sha256_of(&data);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let data = data.clone();
        let digest = digest.clone();
        tasks.push(tokio::spawn(async move {
            let mut w = store.writer(Some(digest), Some(data.len() as u64)).await?;
            for chunk in data.chunks(10_000) {
                w.write(chunk).await?;
                tokio::task::yield_now().await;
            }
            w.commit().await
        }));
    }
    let mut created = 0;
    for t in tasks {
        let commit = t.await.unwrap().unwrap();
        assert_eq!(commit.info.digest, digest);
        if commit.created {
            created += 1;
        }
    }
    assert_eq!(created, 1, "exactly one writer creates the blob");
    assert_eq!(store.read_blob(&digest, u64::MAX).await.unwrap(), data);
    assert!(entries(&store.root().join("ingest")).is_empty());
    assert_eq!(
        entries(&store.root().join("blobs/sha256")),
        [digest.encoded().to_owned()]
    );
}

#[tokio::test]
async fn writing_an_existing_blob_is_not_an_error() {
    let (_dir, store) = store().await;
    let first = store.write_blob(b"same".to_vec(), None).await.unwrap();
    let second = store
        .write_blob(b"same".to_vec(), Some(&first.info.digest))
        .await
        .unwrap();
    assert!(first.created && !second.created);
    assert_eq!(first.info, second.info);
}

#[tokio::test]
async fn missing_blobs_are_not_found() {
    let (_dir, store) = store().await;
    let d = Digest::sha256_of(b"nope");
    assert!(!store.exists(&d).await.unwrap());
    let err = store.info(&d).await.unwrap_err();
    assert_eq!(err.to_string(), format!("content {d}: not found"));
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(matches!(
        store.open_blob(&d).await,
        Err(ContentError::NotFound(_))
    ));
    assert!(matches!(
        store.read_blob(&d, 10).await,
        Err(ContentError::NotFound(_))
    ));
    assert!(matches!(
        store.delete(&d).await,
        Err(ContentError::NotFound(_))
    ));
}

#[tokio::test]
async fn read_blob_enforces_its_limit() {
    let (_dir, store) = store().await;
    let c = store.write_blob(vec![0u8; 100], None).await.unwrap();
    assert_eq!(
        store.read_blob(&c.info.digest, 100).await.unwrap().len(),
        100
    );
    let err = store.read_blob(&c.info.digest, 99).await.unwrap_err();
    assert!(
        matches!(
            err,
            ContentError::TooLarge {
                size: 100,
                limit: 99,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn leases_protect_from_delete_and_gc() {
    let (_dir, store) = store().await;
    let a = store
        .write_blob(b"a".to_vec(), None)
        .await
        .unwrap()
        .info
        .digest;
    let b = store
        .write_blob(b"b".to_vec(), None)
        .await
        .unwrap()
        .info
        .digest;
    let c = store
        .write_blob(b"c".to_vec(), None)
        .await
        .unwrap()
        .info
        .digest;
    let never_stored = Digest::sha256_of(b"never stored");

    let lease1 = store.lease();
    let lease2 = store.lease();
    assert_ne!(lease1.id(), lease2.id());
    lease1.add(&a);
    lease1.add(&a);
    lease1.add(&b);
    lease2.add(&b);
    assert!(store.is_protected(&a) && store.is_protected(&b) && !store.is_protected(&c));
    assert_eq!(lease1.digests(), {
        let mut v = vec![a.clone(), b.clone()];
        v.sort();
        v
    });

    let err = store.delete(&a).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("content {a} is held by a lease: failed precondition")
    );
    let deleted = store
        .delete_unprotected(vec![a.clone(), b.clone(), c.clone(), never_stored.clone()])
        .await
        .unwrap();
    assert_eq!(deleted, vec![c.clone()]);
    assert!(store.exists(&a).await.unwrap() && store.exists(&b).await.unwrap());
    assert!(!store.exists(&c).await.unwrap());

    // b stays protected by lease2 after lease1 lets it go.
    assert!(lease1.remove(&b));
    assert!(!lease1.remove(&b));
    assert!(!lease1.contains(&b) && lease2.contains(&b));
    assert!(store.is_protected(&b));
    assert!(
        store
            .delete_unprotected(vec![b.clone()])
            .await
            .unwrap()
            .is_empty()
    );

    // Dropping a lease releases everything it held.
    drop(lease1);
    assert!(!store.is_protected(&a));
    assert_eq!(
        store
            .delete_unprotected(vec![a.clone(), b.clone()])
            .await
            .unwrap(),
        vec![a.clone()]
    );
    drop(lease2);
    store.delete(&b).await.unwrap();
    assert!(store.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn open_recovers_from_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("content");
    let kept;
    {
        let store = ContentStore::open(&root).await.unwrap();
        kept = store
            .write_blob(b"committed".to_vec(), None)
            .await
            .unwrap()
            .info;
        // A writer "killed" mid-write: its file stays because it is leaked.
        let mut w = store.writer(None, None).await.unwrap();
        w.write(b"half".to_vec()).await.unwrap();
        std::mem::forget(w);
    }
    // Leftovers of a crash: a stray file and directory in ingest.
    std::fs::write(root.join("ingest/stray"), b"junk").unwrap();
    std::fs::create_dir_all(root.join("ingest/olddir/sub")).unwrap();
    std::fs::write(root.join("ingest/olddir/sub/data"), b"junk").unwrap();
    assert_eq!(entries(&root.join("ingest")).len(), 3);

    let store = ContentStore::open(&root).await.unwrap();
    assert!(entries(&root.join("ingest")).is_empty());
    assert_eq!(store.info(&kept.digest).await.unwrap(), kept);
    let listed = store.list().await.unwrap();
    assert_eq!(listed, [kept]);
}

#[tokio::test]
async fn list_ignores_foreign_files() {
    let (_dir, store) = store().await;
    let c = store.write_blob(b"x".to_vec(), None).await.unwrap().info;
    std::fs::write(store.root().join("blobs/sha256/not-a-digest"), b"").unwrap();
    std::fs::create_dir_all(store.root().join("blobs/md5")).unwrap();
    assert_eq!(store.list().await.unwrap(), [c]);
}
