//! Containers: create (and its replay), delete, properties, listing.

use super::*;

pub fn container_lifecycle(s: &dyn BlobStore) {
    let t = txn();
    let md = meta(&[("Owner", "me")]);
    let p = s.create_container(&cname("box"), &md, &t).unwrap();
    assert!(p.etag.starts_with("\"0x"), "{}", p.etag);
    assert_eq!(p.metadata, md);
    assert_eq!(s.container_properties(&cname("box")).unwrap(), p);
    // A replay of the create answers with the container as it is; another txn conflicts.
    assert_eq!(s.create_container(&cname("box"), &Metadata::default(), &t).unwrap(), p);
    assert_err!(s.create_container(&cname("box"), &md, &txn()), StoreError::AlreadyExists);
    s.delete_container(&cname("box")).unwrap();
    assert_err!(s.container_properties(&cname("box")), StoreError::ContainerNotFound);
    assert_err!(s.delete_container(&cname("box")), StoreError::ContainerNotFound);
    let p2 = s.create_container(&cname("box"), &Metadata::default(), &txn()).unwrap();
    assert_ne!(p2.etag, p.etag);
}

pub fn delete_container_removes_contents(s: &dyn BlobStore) {
    new_container(s, "box");
    put(s, "box", "a", b"1");
    put(s, "box", "dir/b", b"2");
    stage(s, "box", "c", b"blk", b"3");
    s.delete_container(&cname("box")).unwrap();
    assert_err!(get(s, "box", "a"), StoreError::ContainerNotFound);
    new_container(s, "box");
    assert!(names(s, "box").is_empty());
    assert_err!(get(s, "box", "a"), StoreError::BlobNotFound);
    assert_err!(s.get_block_list(&bref("box", "c"), BlockListType::All), StoreError::BlobNotFound);
}

pub fn list_containers_paging(s: &dyn BlobStore) {
    for i in 0..12 {
        let md = meta(&[("n", &i.to_string())]);
        s.create_container(&cname(&format!("c{i:02}")), &md, &txn()).unwrap();
    }
    new_container(s, "other");
    let req = |prefix: &str, marker: &str, max, include_metadata| ListContainers {
        prefix: prefix.into(),
        marker: marker.into(),
        max_results: max,
        include_metadata,
    };
    let p1 = s.list_containers(&req("c", "", 5, false)).unwrap();
    let n1: Vec<_> = p1.items.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(n1, ["c00", "c01", "c02", "c03", "c04"]);
    assert_eq!(p1.next_marker, "c04");
    assert!(p1.items.iter().all(|e| e.properties.metadata.0.is_empty()));
    let p2 = s.list_containers(&req("c", "c04", 5, true)).unwrap();
    assert_eq!(p2.items[0].name, "c05");
    assert_eq!(p2.items[0].properties.metadata, meta(&[("n", "5")]));
    let p3 = s.list_containers(&req("c", &p2.next_marker, 5, false)).unwrap();
    let n3: Vec<_> = p3.items.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(n3, ["c10", "c11"]);
    assert_eq!(p3.next_marker, "");
    // Exactly a page's worth left: no marker.
    assert_eq!(s.list_containers(&req("c1", "", 2, false)).unwrap().next_marker, "");
    let all = s.list_containers(&req("", "", 0, false)).unwrap();
    assert_eq!(all.items.len(), 13);
    assert_eq!(all.items.last().unwrap().name, "other");
    assert!(s.list_containers(&req("zz", "", 0, false)).unwrap().items.is_empty());
}

pub fn missing_container(s: &dyn BlobStore) {
    let r = bref("nope", "a");
    let n = Conditions::none();
    assert_err!(s.put_blob(&put_req("nope", "a"), &mut VecSource::new(b"x"), &txn()), StoreError::ContainerNotFound);
    assert_err!(get(s, "nope", "a"), StoreError::ContainerNotFound);
    assert_err!(s.blob_properties(&r, &n), StoreError::ContainerNotFound);
    assert_err!(s.delete_blob(&r, &n), StoreError::ContainerNotFound);
    assert_err!(s.list_blobs(&list_req("nope", "", "", "", 0)), StoreError::ContainerNotFound);
    assert_err!(s.put_block(&r, &bid(b"1"), &mut VecSource::new(b"x"), None), StoreError::ContainerNotFound);
    assert_err!(s.put_block_list(&block_list_req("nope", "a", &[]), &txn()), StoreError::ContainerNotFound);
    assert_err!(s.get_block_list(&r, BlockListType::All), StoreError::ContainerNotFound);
}
