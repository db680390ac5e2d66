//! POSIX ACLs in the kernel's xattr encoding (`system.posix_acl_access`,
//! `system.posix_acl_default`): a little-endian u32 version (2), then entries of
//! (u16 tag, u16 perm, u32 id). With FUSE's POSIX ACL support the kernel enforces them,
//! and the filesystem keeps them in step with the mode and inherits default ACLs, with
//! the same algorithms as the kernel's `posix_acl_create` and `posix_acl_chmod`; those
//! are here, pure, so every meta replica computes the same result.

use crate::{FsError, FsResult};

pub const ACCESS_XATTR: &[u8] = b"system.posix_acl_access";
pub const DEFAULT_XATTR: &[u8] = b"system.posix_acl_default";

const VERSION: u32 = 2;
pub const USER_OBJ: u16 = 0x01;
pub const USER: u16 = 0x02;
pub const GROUP_OBJ: u16 = 0x04;
pub const GROUP: u16 = 0x08;
pub const MASK: u16 = 0x10;
pub const OTHER: u16 = 0x20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub tag: u16,
    pub perm: u16,
    pub id: u32,
}

/// A parsed ACL, entries in the order they were given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl(pub Vec<Entry>);

impl Acl {
    /// Parses and checks the xattr value: version 2, known tags, perms within rwx, one
    /// each of user-obj, group-obj and other, a mask when named entries exist.
    pub fn parse(v: &[u8]) -> FsResult<Acl> {
        let bad = |why: &str| FsError::Invalid(format!("POSIX ACL: {why}"));
        if v.len() < 4 || !(v.len() - 4).is_multiple_of(8) {
            return Err(bad("length is not 4 + 8 per entry"));
        }
        if u32::from_le_bytes([v[0], v[1], v[2], v[3]]) != VERSION {
            return Err(bad("version is not 2"));
        }
        let entries: Vec<Entry> = v[4..]
            .chunks_exact(8)
            .map(|c| Entry {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]),
                id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        let count = |t: u16| entries.iter().filter(|e| e.tag == t).count();
        if entries.iter().any(|e| {
            e.perm & !7 != 0 || ![USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER].contains(&e.tag)
        }) {
            return Err(bad("unknown tag or permission bits"));
        }
        if count(USER_OBJ) != 1 || count(GROUP_OBJ) != 1 || count(OTHER) != 1 || count(MASK) > 1 {
            return Err(bad(
                "needs exactly one user, group and other entry, at most one mask",
            ));
        }
        if count(MASK) == 0 && (count(USER) > 0 || count(GROUP) > 0) {
            return Err(bad("named entries need a mask"));
        }
        Ok(Acl(entries))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = VERSION.to_le_bytes().to_vec();
        for e in &self.0 {
            v.extend_from_slice(&e.tag.to_le_bytes());
            v.extend_from_slice(&e.perm.to_le_bytes());
            v.extend_from_slice(&e.id.to_le_bytes());
        }
        v
    }

    /// The mode's rwx bits the ACL stands for (user-obj, mask or else group-obj, other),
    /// and whether the three base entries are all it has (then the mode alone says it).
    pub fn mode_bits(&self) -> (u32, bool) {
        let perm = |t: u16| {
            self.0
                .iter()
                .find(|e| e.tag == t)
                .map_or(0, |e| e.perm as u32)
        };
        let group = if self.0.iter().any(|e| e.tag == MASK) {
            perm(MASK)
        } else {
            perm(GROUP_OBJ)
        };
        let equiv = self.0.len() == 3;
        ((perm(USER_OBJ) << 6) | (group << 3) | perm(OTHER), equiv)
    }

    /// `chmod`: the base entries (and the mask, which stands for the group bits when
    /// there is one) take the new mode's bits (the kernel's `posix_acl_chmod`).
    pub fn chmod(&mut self, mode: u32) {
        let has_mask = self.0.iter().any(|e| e.tag == MASK);
        for e in &mut self.0 {
            match e.tag {
                USER_OBJ => e.perm = ((mode >> 6) & 7) as u16,
                OTHER => e.perm = (mode & 7) as u16,
                MASK => e.perm = ((mode >> 3) & 7) as u16,
                GROUP_OBJ if !has_mask => e.perm = ((mode >> 3) & 7) as u16,
                _ => {}
            }
        }
    }

    /// A new inode's access ACL from its directory's default ACL and the mode it was
    /// created with (the kernel's `posix_acl_create_masq`): each base entry (the mask for
    /// the group bits when there is one) is cut to the mode's bits and the mode's rwx
    /// bits to the entries. Returns the mode, and the ACL unless the mode alone says it.
    pub fn create_masq(mut self, mode: u32) -> (u32, Option<Acl>) {
        let mut m = mode & 0o777;
        let has_mask = self.0.iter().any(|e| e.tag == MASK);
        for e in &mut self.0 {
            match e.tag {
                USER_OBJ => {
                    e.perm &= ((m >> 6) & 7) as u16;
                    m &= ((e.perm as u32) << 6) | !0o700;
                }
                OTHER => {
                    e.perm &= (m & 7) as u16;
                    m &= (e.perm as u32) | !0o007;
                }
                _ => {}
            }
        }
        for e in &mut self.0 {
            if e.tag == MASK || (e.tag == GROUP_OBJ && !has_mask) {
                e.perm &= ((m >> 3) & 7) as u16;
                m &= ((e.perm as u32) << 3) | !0o070;
            }
        }
        let mode = (mode & !0o777) | (m & 0o777);
        let equiv = self.0.len() == 3;
        (mode, (!equiv).then_some(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Acl {
        Acl(entries
            .iter()
            .map(|&(tag, perm, id)| Entry { tag, perm, id })
            .collect())
    }

    #[test]
    fn an_acl_round_trips_and_malformed_ones_are_refused() {
        let a = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 4, 1000),
            (GROUP_OBJ, 5, 0),
            (MASK, 5, 0),
            (OTHER, 0, 0),
        ]);
        assert_eq!(Acl::parse(&a.encode()).unwrap(), a);
        assert!(Acl::parse(&[2, 0, 0, 0, 1]).is_err(), "truncated entry");
        let mut v1 = a.encode();
        v1[0] = 1;
        assert!(Acl::parse(&v1).is_err(), "version 1");
        let no_mask = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 4, 1000),
            (GROUP_OBJ, 5, 0),
            (OTHER, 0, 0),
        ]);
        assert!(
            Acl::parse(&no_mask.encode()).is_err(),
            "named entry without a mask"
        );
        let no_other = acl(&[(USER_OBJ, 7, 0), (GROUP_OBJ, 5, 0)]);
        assert!(Acl::parse(&no_other.encode()).is_err());
        let bad_perm = acl(&[(USER_OBJ, 8, 0), (GROUP_OBJ, 5, 0), (OTHER, 0, 0)]);
        assert!(Acl::parse(&bad_perm.encode()).is_err());
    }

    #[test]
    fn mode_bits_use_the_mask_for_the_group_and_chmod_writes_it_back() {
        let mut a = acl(&[
            (USER_OBJ, 6, 0),
            (USER, 7, 1000),
            (GROUP_OBJ, 4, 0),
            (MASK, 6, 0),
            (OTHER, 4, 0),
        ]);
        assert_eq!(a.mode_bits(), (0o664, false));
        a.chmod(0o640);
        assert_eq!(a.mode_bits(), (0o640, false));
        assert_eq!(a.0[2].perm, 4, "group-obj keeps its bits under a mask");
        let mut base = acl(&[(USER_OBJ, 6, 0), (GROUP_OBJ, 4, 0), (OTHER, 4, 0)]);
        base.chmod(0o751);
        assert_eq!(base.mode_bits(), (0o751, true));
    }

    #[test]
    fn inheritance_cuts_the_default_acl_to_the_create_mode_as_the_kernel_does() {
        // setfacl -d -m u:1000:rwx,m::rwx on a 0755 directory; then open(O_CREAT, 0666).
        let d = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 7, 1000),
            (GROUP_OBJ, 5, 0),
            (MASK, 7, 0),
            (OTHER, 5, 0),
        ]);
        let (mode, a) = d.clone().create_masq(0o100666);
        assert_eq!(mode, 0o100664);
        let a = a.expect("named entries: an ACL is kept");
        assert_eq!(a.mode_bits(), (0o664, false));
        assert_eq!(
            a.0[1].perm, 7,
            "named entries are not cut (the mask limits them)"
        );
        assert_eq!(mode & 0o777, 0o664);
        // mkdir 0777 keeps everything the default allows.
        let (mode, _) = d.create_masq(0o40777);
        assert_eq!(mode, 0o40775);
        // A default ACL of base entries only leaves the mode, no ACL.
        let base = acl(&[(USER_OBJ, 7, 0), (GROUP_OBJ, 0, 0), (OTHER, 0, 0)]);
        assert_eq!(base.create_masq(0o644), (0o600, None));
    }
}
