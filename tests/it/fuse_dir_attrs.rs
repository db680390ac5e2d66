//! Directory attributes after this mount's own changes: the kernel drops a directory's
//! attributes after every create in it (`default_permissions`) and asks again at the next
//! permission check; the mount answers from the attributes meta returned with the create,
//! so creating N files costs no N getattr calls at meta. They are right (nlink after a
//! mkdir, mode after a chmod, at once on this mount) and another mount's change of the
//! directory is seen within the attribute TTL, as without the cache.

use crate::fuse_common;

use crate::fixtures::wait_until_blocking;
use fuse_common::{cluster, runtime, within, Mount};
use std::ops::ControlFlow;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

/// `cirrus_requests_total{op="<op>",...}` summed over every code on one daemon.
fn requests(addr: &str, op: &str) -> f64 {
    crate::fixtures::metric_sum(addr, "cirrus_requests_total", &format!("op=\"{op}\""))
        .expect("scrape meta metrics")
}

#[test]
fn creating_files_asks_meta_for_no_directory_attributes_and_they_stay_right() {
    let rt = runtime();
    let c = cluster(&rt, 2, 1);
    let a = Mount::new(&c.meta_addrs());
    let b = Mount::new(&c.meta_addrs());
    let metas: Vec<String> = (0..c.meta_count())
        .map(|i| c.meta_metrics_addr(i))
        .collect();
    let (pa, pb) = (a.path.clone(), b.path.clone());
    within(
        "directory attribute checks",
        Duration::from_secs(240),
        move || {
            let d = pa.join("d");
            std::fs::create_dir(&d).unwrap();
            let getattrs = || metas.iter().map(|m| requests(m, "Getattr")).sum::<f64>();
            let before = getattrs();
            for i in 0..60 {
                std::fs::File::create(d.join(format!("f{i}"))).unwrap();
            }
            let asked = getattrs() - before;
            assert!(
                asked < 15.0,
                "60 creates in one directory asked meta for {asked} getattrs (one per create \
             means the parent's attributes are not served from the create replies)"
            );

            // Right on this mount at once: a mkdir raises nlink, a chmod shows.
            let nlink = std::fs::metadata(&d).unwrap().nlink();
            std::fs::create_dir(d.join("sub")).unwrap();
            assert_eq!(
                std::fs::metadata(&d).unwrap().nlink(),
                nlink + 1,
                "nlink after mkdir"
            );
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o750)).unwrap();
            assert_eq!(
                std::fs::metadata(&d).unwrap().mode() & 0o7777,
                0o750,
                "mode after chmod"
            );

            // Another mount's chmod is seen here within the TTL (plus slack for a loaded box).
            std::fs::set_permissions(pb.join("d"), std::fs::Permissions::from_mode(0o705)).unwrap();
            wait_until_blocking(
                "mount A to show mount B's chmod",
                Duration::from_secs(10),
                || {
                    let m = std::fs::metadata(&d)?.mode() & 0o7777;
                    Ok(if m == 0o705 {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(format!("mode {m:o}"))
                    })
                },
            )
            .unwrap();
            // And a create here right after serves the new attributes, not older ones.
            std::fs::File::create(d.join("g")).unwrap();
            assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o7777, 0o705);
        },
    );
    drop(a);
    drop(b);
}
