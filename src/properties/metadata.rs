//! Domain metadata files as the agent reads them: any bytes parse (to what they say or to
//! nothing), a file names the domain it was written for, and no file is read past the cap.

use proptest::prelude::*;

use super::{body, config};
use crate::agent::storage::{
    FileStorage, Storage, make_file_domain, metadata_text, parse_metadata,
};

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn any_bytes_parse(bytes in prop_oneof![
        body(),
        "((SDUUID|VERSION|ROLE| SDUUID)=[^\n]{0,40}\n?){0,8}".prop_map(String::into_bytes),
    ]) {
        let md = parse_metadata(&bytes);
        if let Some(sd) = &md.sd_uuid {
            prop_assert_eq!(sd.trim(), sd.as_str());
            prop_assert_eq!(sd.to_ascii_lowercase(), sd.clone());
        }
    }

    #[test]
    fn a_written_file_names_its_domain(uuid in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}") {
        let md = parse_metadata(metadata_text(&uuid).as_bytes());
        prop_assert_eq!(md.sd_uuid.as_deref(), Some(uuid.as_str()));
        prop_assert_eq!(md.version, Some(5));
    }
}

proptest! {
    #![proptest_config(config(8))]

    /// However large the file on storage, a read returns at most 64 KiB.
    #[test]
    fn reads_stop_at_the_cap(extra in 0usize..4_000_000) {
        let dir = tempfile::tempdir().expect("tempdir");
        let sd = "aaaaaaaa-0000-0000-0000-000000000001";
        let path = make_file_domain(dir.path(), "nfs:_export", sd).expect("layout");
        let mut text = metadata_text(sd).into_bytes();
        text.resize(text.len() + extra, b'x');
        std::fs::write(&path, &text).expect("write");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let storage = FileStorage::new(dir.path());
        let read = runtime
            .block_on(async { storage.read_metadata(sd).await })
            .expect("readable");
        prop_assert!(read.len() <= 64 * 1024);
        let md = parse_metadata(&read);
        prop_assert_eq!(md.sd_uuid.as_deref(), Some(sd));
    }
}
