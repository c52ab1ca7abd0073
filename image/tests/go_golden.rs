//! Golden outputs of Go's encoding/json (Go 1.23, image-spec v1.1.1,
//! docker-image-spec v1.3.1, as vendored by BuildKit v0.24) for the same
//! values: our JSON must be byte-identical, or digests would differ.

use std::collections::BTreeMap;

use bk_image::digest::Digest;
use bk_image::json;
use bk_image::media_types;
use bk_image::types::{
    Descriptor, Empty, HealthConfig, History, Image, ImageConfig, Manifest, Platform, RootFs,
};

const D: &str = "sha256:e692418e4cbaf90ca69d05a66403747baa33ee08806650b51fab815ad7fc331f";

/// `json.Marshal([]string{s})` where s is U+0000..U+007F, U+2028, U+2029,
/// é, 😀 and U+FFFD.
const GO_ASCII: &str = "[\"\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007\\b\\t\\n\\u000b\\f\\r\\u000e\\u000f\\u0010\\u0011\\u0012\\u0013\\u0014\\u0015\\u0016\\u0017\\u0018\\u0019\\u001a\\u001b\\u001c\\u001d\\u001e\\u001f !\\\"#$%\\u0026'()*+,-./0123456789:;\\u003c=\\u003e?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\\\]^_`abcdefghijklmnopqrstuvwxyz{|}~\u{7f}\\u2028\\u2029\u{e9}\u{1f600}\u{fffd}\"]";

/// `json.Marshal(dockerspec.DockerOCIImage{…})`.
const GO_IMAGE: &str = r#"{"created":"2024-01-02T03:04:05.123456789Z","author":"me \u003cme@x\u003e","architecture":"arm64","os":"linux","os.version":"1","os.features":["f"],"variant":"v8","rootfs":{"type":"layers","diff_ids":["sha256:e692418e4cbaf90ca69d05a66403747baa33ee08806650b51fab815ad7fc331f"]},"history":[{"created":"2024-01-02T03:04:05.123456789Z","created_by":"RUN a \u0026\u0026 b","comment":"c","empty_layer":true}],"config":{"User":"u","ExposedPorts":{"443/tcp":{},"80/tcp":{}},"Env":["A=1"],"Entrypoint":["/e"],"Cmd":["c"],"Volumes":{"/v":{}},"WorkingDir":"/w","Labels":{"a":"2","z":"1"},"StopSignal":"SIGTERM","ArgsEscaped":true,"Healthcheck":{"Test":["CMD","true"],"Interval":30000000000,"Timeout":1000000000,"StartPeriod":2,"StartInterval":3,"Retries":4},"OnBuild":["RUN x"],"Shell":["/bin/sh","-c"]}}"#;

/// `json.MarshalIndent(ocispec.Manifest{…}, "", "  ")`.
const GO_MANIFEST: &str = r#"{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.manifest.v1+json",
  "config": {
    "mediaType": "application/vnd.oci.image.config.v1+json",
    "digest": "sha256:e692418e4cbaf90ca69d05a66403747baa33ee08806650b51fab815ad7fc331f",
    "size": 2,
    "annotations": {
      "a": "\u003c\u0026\u003e",
      "b": "1"
    },
    "data": "e30="
  },
  "layers": [
    {
      "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
      "digest": "sha256:e692418e4cbaf90ca69d05a66403747baa33ee08806650b51fab815ad7fc331f",
      "size": 3,
      "urls": [
        "http://x"
      ],
      "platform": {
        "architecture": "amd64",
        "os": "linux"
      },
      "artifactType": "t"
    }
  ],
  "annotations": {
    "k": "v"
  }
}"#;

#[test]
fn strings_escape_like_go() {
    let mut s: String = (0u32..0x80).filter_map(char::from_u32).collect();
    s.push_str("\u{2028}\u{2029}é😀\u{fffd}");
    assert_eq!(
        String::from_utf8(json::to_vec(&[s]).unwrap()).unwrap(),
        GO_ASCII
    );
}

#[test]
fn image_config_is_byte_identical_to_go() {
    let created = Some("2024-01-02T03:04:05.123456789Z".to_owned());
    let image = Image {
        created: created.clone(),
        author: "me <me@x>".into(),
        platform: Platform {
            architecture: "arm64".into(),
            os: "linux".into(),
            os_version: "1".into(),
            os_features: vec!["f".into()],
            variant: "v8".into(),
        },
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![Digest::parse(D).unwrap()],
        },
        history: vec![History {
            created,
            created_by: "RUN a && b".into(),
            author: String::new(),
            comment: "c".into(),
            empty_layer: true,
        }],
        config: ImageConfig {
            user: "u".into(),
            exposed_ports: [("80/tcp".to_owned(), Empty), ("443/tcp".to_owned(), Empty)].into(),
            env: vec!["A=1".into()],
            entrypoint: vec!["/e".into()],
            cmd: vec!["c".into()],
            volumes: [("/v".to_owned(), Empty)].into(),
            working_dir: "/w".into(),
            labels: [
                ("z".to_owned(), "1".to_owned()),
                ("a".to_owned(), "2".to_owned()),
            ]
            .into(),
            stop_signal: "SIGTERM".into(),
            args_escaped: true,
            healthcheck: Some(HealthConfig {
                test: vec!["CMD".into(), "true".into()],
                interval: 30_000_000_000,
                timeout: 1_000_000_000,
                start_period: 2,
                start_interval: 3,
                retries: 4,
            }),
            on_build: vec!["RUN x".into()],
            shell: vec!["/bin/sh".into(), "-c".into()],
        },
    };
    assert_eq!(
        String::from_utf8(json::to_vec(&image).unwrap()).unwrap(),
        GO_IMAGE
    );
    // And it reads back to the same value.
    let back: Image = serde_json::from_str(GO_IMAGE).unwrap();
    assert_eq!(back, image);
}

#[test]
fn indented_manifest_is_byte_identical_to_go() {
    let digest = Digest::parse(D).unwrap();
    let mut config = Descriptor::new(media_types::OCI_CONFIG, digest.clone(), 2);
    config.data = b"{}".to_vec();
    config.annotations = [
        ("b".to_owned(), "1".to_owned()),
        ("a".to_owned(), "<&>".to_owned()),
    ]
    .into();
    let mut layer = Descriptor::new(media_types::OCI_LAYER_GZIP, digest, 3);
    layer.urls = vec!["http://x".into()];
    layer.platform = Some(Platform::new("linux", "amd64"));
    layer.artifact_type = "t".into();
    let manifest = Manifest {
        schema_version: 2,
        media_type: media_types::OCI_MANIFEST.into(),
        artifact_type: String::new(),
        config,
        layers: vec![layer],
        subject: None,
        annotations: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
    };
    assert_eq!(
        String::from_utf8(json::to_vec_pretty(&manifest).unwrap()).unwrap(),
        GO_MANIFEST
    );
    let back: Manifest = serde_json::from_str(GO_MANIFEST).unwrap();
    assert_eq!(back, manifest);
}
