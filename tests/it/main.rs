//! Every integration test in one binary (issue 25): one link of the world instead of one
//! per file. A module per area, named as its file was (`fuse_locks`, `data_chain`, ...);
//! the shared fixtures are `fuse_common` (real cluster and `cirrus mount` processes),
//! `data_common`, `meta_common`, and `fixtures` (one `/metrics` scrape). nextest still runs each test in its own process, and
//! `.config/nextest.toml` runs the cluster tests of this binary one at a time.

mod data_common;
mod fixtures;
mod fuse_common;
mod meta_common;

mod chaos_cluster;
mod chaos_short;
mod client_commit_truncate;
mod client_failed_flush;
mod client_release_batch;
mod data_bulk;
mod data_chain;
mod data_corruption;
mod data_disk_full;
mod data_left_chain;
mod data_rebuild_lost_block;
mod data_rebuild_version;
mod data_sparse;
mod data_stale_version;
mod data_truncate_gc;
mod doctor_metrics;
mod doctor_netns;
mod fuse_acls;
mod fuse_dir_attrs;
mod fuse_exerciser;
mod fuse_faults;
mod fuse_limits;
mod fuse_locks;
mod fuse_open_file_size;
mod fuse_programs;
mod fuse_two_mounts;
mod meta_bad_input;
mod meta_durability;
mod meta_read_lease;
mod meta_retry;
mod mount_errors;
mod readme_commands;
mod upgrade_rolling;
