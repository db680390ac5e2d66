//! The bulk protocol on a real data server (3 meta + 1 data, R=1): it shares the data
//! port with gRPC, round-trips a write and a read, and refuses bad input with a clear
//! error that changes nothing: a request of another cluster, a payload whose crcs do not
//! match, and a frame over the size limit (after which the server goes on serving).

use crate::data_common;

use anyhow::{anyhow, bail, ensure, Result};
use cirrus_proto::bulk::{BulkClient, Head, Kind, MAX_PAYLOAD, PREFACE};
use cirrus_proto::pb;
use cirrus_raft_tests::cluster::ClusterBuilder;
use cirrus_types::checksum::{piece_crcs, verify_pieces};
use cirrus_types::FsError;
use data_common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_calls_share_the_data_port_and_bad_ones_are_refused_without_changing_anything(
) -> Result<()> {
    let c = ClusterBuilder::new()
        .data_servers(1)
        .replicas(1)
        .start()
        .await?;
    let info = c.data_info(0).await?;
    let t = c.chain_table().await?;
    let ch = t
        .chains
        .iter()
        .find(|ch| !ch.members.is_empty())
        .ok_or_else(|| anyhow!("no chain with a member: {t:?}"))?;
    let chain = Some(pb::ChainRef {
        id: ch.id,
        version: ch.version,
    });
    let object = Some(pb::ObjectRef {
        ino: 1 << 40,
        index: 0,
    });
    let addr = c.data_addr(0);
    let bulk = BulkClient::new(&addr);
    let data = pattern(3, 0, 3 * 4096 + 100);
    let write = |cluster_id: String, data: Vec<u8>, crcs: Vec<u32>| pb::WriteRequest {
        cluster_id,
        chain,
        object,
        offset: 0,
        data: data.into(),
        crcs,
        sync: false,
        hop: 0,
    };

    // Another cluster's request: refused, and no object appears.
    let other = write(
        "00000000-0000-0000-0000-000000000001".into(),
        data.clone(),
        piece_crcs(0, &data),
    );
    match bulk.write(other, HANG).await {
        Err(FsError::WrongCluster { .. }) => {}
        r => bail!("a write for another cluster answered {r:?}"),
    }
    ensure!(
        c.data_info(0).await?.objects == 0,
        "a refused write created an object"
    );

    // Crcs that do not match the payload: refused as a checksum error, nothing written.
    let mut bad = piece_crcs(0, &data);
    bad[1] ^= 1;
    match bulk
        .write(write(info.cluster_id.clone(), data.clone(), bad), HANG)
        .await
    {
        Err(FsError::Checksum(_)) => {}
        r => bail!("a write with a wrong crc answered {r:?}"),
    }
    ensure!(
        c.data_info(0).await?.objects == 0,
        "a write with a wrong crc created an object"
    );

    // A good write and read over bulk; the data server's gRPC Info answered above, on the
    // same port.
    bulk.write(
        write(info.cluster_id.clone(), data.clone(), piece_crcs(0, &data)),
        HANG,
    )
    .await
    .map_err(|e| anyhow!("bulk write: {e}"))?;
    let read = pb::ReadRequest {
        cluster_id: info.cluster_id.clone(),
        chain,
        object,
        offset: 0,
        len: data.len() as u32 + 5000,
    };
    let r = bulk
        .read(read.clone(), HANG)
        .await
        .map_err(|e| anyhow!("bulk read: {e}"))?;
    ensure!(r.data[..] == data[..], "bulk read returned other bytes");
    verify_pieces(0, &r.data, &r.crcs).map_err(|e| anyhow!("read crcs: {e}"))?;

    // A frame over the limit: an error reply naming it, then the connection closes.
    let mut s = tokio::net::TcpStream::connect(&addr).await?;
    s.write_all(&PREFACE).await?;
    let mut raw = Head {
        kind: Kind::Write,
        call: 77,
        header_len: 0,
        payload_len: 0,
    }
    .encode();
    raw[8..12].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
    s.write_all(&raw).await?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut reply))
        .await
        .map_err(|_| anyhow!("the server kept a connection with a bad frame open"))??;
    ensure!(reply.len() >= 20, "no error reply to an oversized frame");
    let mut head = [0u8; 20];
    head.copy_from_slice(&reply[..20]);
    let h = Head::decode(&head).map_err(|(_, e)| anyhow!("reply head: {e}"))?;
    ensure!(
        h.kind == Kind::Error && h.call == 77,
        "oversized frame answered {h:?}"
    );
    ensure!(
        String::from_utf8_lossy(&reply[20..]).contains("limit"),
        "the error does not say what was wrong: {:?}",
        String::from_utf8_lossy(&reply[20..])
    );

    // The server goes on serving, and the object is unchanged.
    let r = bulk
        .read(read, HANG)
        .await
        .map_err(|e| anyhow!("bulk read after the bad frame: {e}"))?;
    ensure!(r.data[..] == data[..], "object changed after refused input");
    ensure!(
        c.data_info(0).await?.objects == 1,
        "expected exactly the one object"
    );
    Ok(())
}
