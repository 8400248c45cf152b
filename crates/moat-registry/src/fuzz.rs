//! Fuzz targets (bolero): what a registry sends — manifests and indexes of
//! every media type, auth challenges — and platform strings.

use crate::manifest;

#[test]
fn manifests_of_any_media_type_never_panic() {
    let types = [
        manifest::OCI_INDEX,
        manifest::OCI_MANIFEST,
        manifest::DOCKER_LIST,
        manifest::DOCKER_MANIFEST,
        manifest::DOCKER_SCHEMA1_SIGNED,
        "",
        "text/html",
    ];
    bolero::check!().for_each(|bytes: &[u8]| {
        for t in types {
            if let Ok(manifest::Parsed::Index(idx)) = manifest::parse(t, bytes) {
                let _ = manifest::choose(&idx, &manifest::Platform::host());
            }
        }
    });
}

#[test]
fn challenges_and_platforms_never_panic() {
    bolero::check!().for_each(|bytes: &[u8]| {
        let s = String::from_utf8_lossy(bytes);
        let _ = crate::auth::parse_challenge(&s);
        let _ = manifest::Platform::parse(&s);
        let _ = moat_core::ImageRef::parse(&s);
    });
}
