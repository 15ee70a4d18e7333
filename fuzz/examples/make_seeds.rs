//! Writes the seed corpora of the fuzz targets from real objects: segments the library creates
//! (their headers as the files hold them), descriptors and pool metadata of a real array
//! publish, array-queue items and serde slots as the library's own writers lay them out, and
//! a few edge cases of each.
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --release --example make_seeds -- fuzz/corpus
//! cargo run --manifest-path fuzz/Cargo.toml --release --example make_seeds -- --check fuzz/corpus
//! ```
//!
//! `--check` writes nothing: it checks that every `real-*` seed (and each CLI seed of a real
//! object) is accepted by the code its target runs, so the seeds start the fuzzer on the paths
//! that succeed.
//!
//! Every segment it makes is scoped and private, under a name with this process's id, and is
//! gone when it exits.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shmbus::{Barrier, Mutex, QueueBuilder, SharedArray, Topic, Value};
use shmbus_core::name::Name;
use shmbus_core::pool::{BlockReceived, PoolSubscriber};
use shmbus_core::queue::array::ArrayItemLayout;
use shmbus_core::segment::{self, Header, HEADER_SIZE};
use shmbus_core::topic::{RawTopic, TopicOptions};
use shmbus_core::wire::{FORMAT_VERSION, MAGIC};
use shmbus_fuzz::{serde_op, Inner, Mode, Status};

type Error = Box<dyn std::error::Error>;

struct Corpus {
    dir: PathBuf,
}

impl Corpus {
    fn new(root: &Path, target: &str) -> Result<Corpus, Error> {
        let dir = root.join(target);
        fs::create_dir_all(&dir)?;
        Ok(Corpus { dir })
    }

    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), Error> {
        fs::write(self.dir.join(name), bytes)?;
        Ok(())
    }
}

/// The first `size_of::<Header>()` bytes of the segment `name` and the file's length.
fn header_of(name: &str) -> Result<(Vec<u8>, u64), Error> {
    let path = segment::shm_path(&Name::new(name)?);
    let bytes = fs::read(&path)?;
    Ok((bytes[..size_of::<Header>()].to_vec(), bytes.len() as u64))
}

fn u32_le(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

/// The seeds of `target` whose file names start with `prefix`.
fn seeds(root: &Path, target: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let mut out = Vec::new();
    for e in fs::read_dir(root.join(target))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) {
            out.push((name, fs::read(e.path())?));
        }
    }
    if out.is_empty() {
        return Err(format!("no {prefix}* seeds for {target}").into());
    }
    Ok(out)
}

/// Checks that the real seeds under `root` pass the checks of their targets.
fn check(root: &Path) -> Result<(), Error> {
    use shmbus_core::fuzzing::*;
    let hs = size_of::<Header>();
    let mut n = 0;
    for (f, b) in seeds(root, "segment_header", "real-")? {
        let info = peek_header(&b[..hs], true).map_err(|e| format!("{f}: {e}"))?;
        let len = u64::from_le_bytes(b[hs..hs + 8].try_into()?) as usize;
        let expect = shmbus_core::segment::Expect {
            type_info: Some(info.type_info.clone()),
            ..shmbus_core::segment::Expect::new(info.kind, info.type_info.clone())
        };
        open_header(&b[..hs], len, &expect).map_err(|e| format!("{f}: {e}"))?;
        n += 1;
    }
    for (f, b) in seeds(root, "pool_descriptor", "real")? {
        let (slot, rest) = b.split_at(shmbus_core::pool::DESCRIPTOR_SIZE);
        let (meta, rest) = rest.split_at(POOL_META_SIZE);
        let len = u64::from_le_bytes(rest[..8].try_into()?) as usize;
        let gens: Vec<u64> = rest[8..]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        resolve_descriptor(slot, meta, len, &gens).map_err(|e| format!("{f}: {e}"))?;
        n += 1;
    }
    for (f, b) in seeds(root, "array_item", "real-")? {
        let meta_size = usize::from(u16::from_le_bytes([b[0], b[1]]));
        let index = u32::from_le_bytes(b[2..6].try_into()?);
        let layout = ArrayItemLayout::from_slot(meta_size, b.len() - 6).ok_or("layout")?;
        layout
            .read(&b[6..], index)
            .map_err(|e| format!("{f}: {e}"))?;
        n += 1;
    }
    for (f, b) in seeds(root, "serde_frame", "real-")? {
        use shmbus::fuzzing::decode;
        let ok = match b[0] {
            serde_op::DECODE_STATUS => decode::<Status>(&b[1..]).is_ok(),
            serde_op::DECODE_STRING => decode::<String>(&b[1..]).is_ok(),
            serde_op::DECODE_VEC => decode::<Vec<u64>>(&b[1..]).is_ok(),
            serde_op::DECODE_TUPLE => decode::<(u8, Option<i32>, Mode)>(&b[1..]).is_ok(),
            _ => false,
        };
        if !ok {
            return Err(format!("serde_frame/{f} does not decode").into());
        }
        n += 1;
    }
    for (f, b) in seeds(root, "payload_layout", "real-")? {
        let len = u32::from_le_bytes(b[1..5].try_into()?) as usize;
        if b[0] % 2 == 0 {
            ring_layout(&b[5..], len).map_err(|e| format!("{f}: {e}"))?;
        } else {
            let mut p = [0u64; 8];
            for (w, c) in p.iter_mut().zip(b[5..].chunks_exact(8)) {
                *w = u64::from_le_bytes(c.try_into()?);
            }
            queue_layout(&p, len).map_err(|e| format!("{f}: {e}"))?;
        }
        n += 1;
    }
    for name in [
        "pose-known",
        "pose-as",
        "status-as",
        "frames",
        "frames-as",
        "jobs",
        "count",
    ] {
        let b = fs::read(root.join("cli_decode").join(name))?;
        let info = peek_header(&b[..hs], false).map_err(|e| format!("{name}: {e}"))?;
        let flags = b[hs];
        let len = usize::from(u16::from_le_bytes([b[hs + 1], b[hs + 2]]));
        let text = std::str::from_utf8(&b[hs + 3..hs + 3 + len])?;
        let slot = &b[hs + 3 + len..];
        let as_spec = (flags & 1 == 1).then_some(text);
        let (json, _) = shmbus_cli::fuzzing::echo(&info, as_spec, slot)?;
        if json.contains("\"error\"") {
            return Err(format!("cli_decode/{name} does not decode: {json}").into());
        }
        n += 1;
    }
    println!("{n} real seeds pass their targets' checks");
    Ok(())
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--check") {
        return check(Path::new(args.get(1).map_or("corpus", String::as_str)));
    }
    let root = PathBuf::from(args.first().map_or("corpus", String::as_str));
    let p = format!("fuzzseed{}", std::process::id());
    let name = |s: &str| format!("{p}.{s}");

    // Real objects of every kind the tools list.
    let topic = Topic::builder(&name("pose")).capacity(8);
    let _pose_pub = topic.publisher::<[f64; 3]>()?;
    let serde_topic = Topic::builder(&name("status"));
    let mut status_pub = serde_topic.serde_publisher::<Status>()?;
    let frames = Topic::builder(&name("frames"))
        .capacity(4)
        .pool_blocks_per_segment(2);
    let mut camera = frames.array_publisher::<[u64; 2]>()?;
    let queue = QueueBuilder::new(&name("jobs")).open_serde::<String>()?;
    let _pod_queue = QueueBuilder::new(&name("ticks")).open::<u64>()?;
    let _value = Value::open_or_create(&name("count"), 7u64)?;
    let _mutex = Mutex::open_or_create(&name("lock"), [0u32; 4])?;
    let _barrier = Barrier::open(&name("gate"), 2)?;
    let _array = SharedArray::<f32>::options()
        .scoped()
        .create(&name("grid"), &[4, 5])?;
    let _ = (&mut status_pub, &queue);

    // Array topic: subscribe with the core's pool subscriber, publish one real array.
    let info = segment::peek(&Name::new(&name("frames"))?)?;
    let raw_topic: Arc<RawTopic> = RawTopic::open(
        &Name::new(&name("frames"))?,
        &info.type_info,
        &TopicOptions::default(),
    )?;
    let sub = PoolSubscriber::new(raw_topic, 0)?;
    let mut loan = camera.loan::<u16>(&[3, 5, 7])?;
    {
        let (data, meta) = loan.parts_mut();
        data.fill(0x1234);
        *meta = [42, 43];
    }
    loan.publish().map_err(|e| e.to_string())?;
    let BlockReceived::Block(block) = sub.receive(Some(Duration::from_secs(2)))? else {
        return Err("the published array did not arrive".into());
    };
    let desc = *block.descriptor();
    let mut slot = vec![0u8; shmbus_core::pool::DESCRIPTOR_SIZE];
    assert!(desc.write_to(&mut slot));
    slot.extend_from_slice(block.meta());
    drop(block);
    let pool_name =
        shmbus_core::pool::segment_name(&Name::new(&name("frames"))?, desc.pool_id, desc.segment)?;
    let pool_file = fs::read(segment::shm_path(&pool_name))?;
    let pool_payload = &pool_file[HEADER_SIZE..];

    // segment_header: every real header, then edge cases of one.
    let c = Corpus::new(&root, "segment_header")?;
    let headers = [
        "pose", "status", "frames", "jobs", "ticks", "count", "lock", "gate", "grid",
    ];
    let mut real = Vec::new();
    for n in headers {
        let (h, len) = header_of(&name(n))?;
        let mut input = h.clone();
        input.extend_from_slice(&len.to_le_bytes());
        c.put(&format!("real-{n}"), &input)?;
        real.push((n, h, len));
    }
    let (h, len) = header_of(pool_name.as_str())?;
    let mut input = h.clone();
    input.extend_from_slice(&len.to_le_bytes());
    c.put("real-pool", &input)?;
    let base = real[0].1.clone();
    let edit = |at: usize, bytes: &[u8]| {
        let mut h = base.clone();
        h[at..at + bytes.len()].copy_from_slice(bytes);
        h
    };
    let off = |f: &str| -> usize {
        match f {
            "version" => std::mem::offset_of!(Header, format_version),
            "kind" => std::mem::offset_of!(Header, kind),
            "lifetime" => std::mem::offset_of!(Header, lifetime),
            "total" => std::mem::offset_of!(Header, total_size),
            "payload" => std::mem::offset_of!(Header, payload_size),
            "name_len" => std::mem::offset_of!(Header, type_name_len),
            "name" => std::mem::offset_of!(Header, type_name),
            "codec" => std::mem::offset_of!(Header, type_codec),
            _ => unreachable!(),
        }
    };
    c.put("edge-magic", &edit(0, b"SHMBUS\0\x02"))?;
    c.put("edge-zero", &[0u8; 320])?;
    c.put("edge-magic-only", &MAGIC)?;
    c.put(
        "edge-version",
        &edit(off("version"), &u32_le(FORMAT_VERSION + 1)),
    )?;
    c.put("edge-kind", &edit(off("kind"), &u32_le(99)))?;
    c.put("edge-lifetime", &edit(off("lifetime"), &u32_le(2)))?;
    c.put(
        "edge-total-max",
        &edit(off("total"), &u64::MAX.to_ne_bytes()),
    )?;
    c.put(
        "edge-payload-max",
        &edit(off("payload"), &u64::MAX.to_ne_bytes()),
    )?;
    c.put("edge-name-long", &edit(off("name_len"), &u32_le(97)))?;
    c.put("edge-name-utf8", &edit(off("name"), &[0xff, 0xfe]))?;
    c.put("edge-codec", &edit(off("codec"), &u32_le(3)))?;

    // payload_layout: the ring headers of real topics, the params of real queues.
    let c = Corpus::new(&root, "payload_layout")?;
    for n in ["pose", "status", "frames"] {
        let bytes = fs::read(segment::shm_path(&Name::new(&name(n))?))?;
        let ring_at = HEADER_SIZE + shmbus_core::wire::topic::RING_OFFSET;
        let ring_len = (bytes.len() - ring_at) as u32;
        let mut input = vec![0u8];
        input.extend_from_slice(&ring_len.to_le_bytes());
        input.extend_from_slice(&bytes[ring_at..ring_at + shmbus_core::fuzzing::RING_HEADER_SIZE]);
        c.put(&format!("real-topic-{n}"), &input)?;
    }
    for n in ["jobs", "ticks"] {
        let info = segment::peek(&Name::new(&name(n))?)?;
        let mut input = vec![1u8];
        input.extend_from_slice(&(info.payload_size as u32).to_le_bytes());
        for w in info.params {
            input.extend_from_slice(&w.to_le_bytes());
        }
        c.put(&format!("real-queue-{n}"), &input)?;
    }

    let mut short = vec![0u8];
    short.extend_from_slice(&256u32.to_le_bytes());
    c.put("edge-topic-short", &short)?;
    let mut huge = vec![1u8];
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    huge.extend_from_slice(&[0xff; 64]);
    c.put("edge-queue-max", &huge)?;

    // pool_descriptor: the real slot, metadata, payload length and generations, and edits.
    let c = Corpus::new(&root, "pool_descriptor")?;
    let meta = &pool_payload[..shmbus_core::fuzzing::POOL_META_SIZE];
    let block_count = u32::from_ne_bytes(meta[12..16].try_into()?) as usize;
    let gen_at = shmbus_core::fuzzing::GENERATIONS_OFFSET;
    let gens = &pool_payload[gen_at..gen_at + 8 * block_count];
    let pool_input = |slot: &[u8], meta: &[u8], len: u64, gens: &[u8]| {
        let mut v = slot[..shmbus_core::pool::DESCRIPTOR_SIZE].to_vec();
        v.extend_from_slice(meta);
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(gens);
        v
    };
    let payload_len = pool_payload.len() as u64;
    c.put("real", &pool_input(&slot, meta, payload_len, gens))?;
    let mut s = slot.clone();
    s[std::mem::offset_of!(shmbus_core::pool::BlockDescriptor, block)..][..4]
        .copy_from_slice(&u32_le(block_count as u32));
    c.put("edge-block", &pool_input(&s, meta, payload_len, gens))?;
    let mut s = slot.clone();
    s[std::mem::offset_of!(shmbus_core::pool::BlockDescriptor, len)..][..8]
        .copy_from_slice(&u64::MAX.to_ne_bytes());
    c.put("edge-len", &pool_input(&s, meta, payload_len, gens))?;
    c.put("edge-short-payload", &pool_input(&slot, meta, 4096, gens))?;
    c.put(
        "edge-stale",
        &pool_input(&slot, meta, payload_len, &[0xff; 16]),
    )?;
    c.put("edge-short-slot", &slot[..100])?;

    // array_item: items as the array queue's writer lays them out.
    let c = Corpus::new(&root, "array_item")?;
    for (i, (meta_size, max, shape, dtype)) in [
        (
            16usize,
            1000usize,
            vec![10usize, 20],
            shmbus_core::dtype::Dtype::U8,
        ),
        (0, 256, vec![4, 4, 4], shmbus_core::dtype::Dtype::F32),
        (8, 64, vec![], shmbus_core::dtype::Dtype::U64),
        (0, 0, vec![0], shmbus_core::dtype::Dtype::I16),
    ]
    .into_iter()
    .enumerate()
    {
        let layout = ArrayItemLayout::new(meta_size, max).ok_or("layout")?;
        let mut slot = vec![0u8; layout.slot_size().ok_or("size")?];
        let index = i as u32 * 3;
        let (data, meta) = layout.prepare(&mut slot, index, dtype, &shape)?;
        data.fill(0x5a);
        meta.fill(0x11);
        let mut input = (meta_size as u16).to_le_bytes().to_vec();
        input.extend_from_slice(&u32_le(index));
        input.extend_from_slice(&slot);
        c.put(&format!("real-{i}"), &input)?;
    }

    // serde_frame: slots as the publisher's encoder writes them.
    let c = Corpus::new(&root, "serde_frame")?;
    let status = Status {
        seq: 300,
        stamp: -5,
        small: 7,
        flag: true,
        ch: 'é',
        name: "robot-1".into(),
        mode: Mode::Moving {
            speed: 1.5,
            heading: -90,
        },
        items: vec![Inner {
            id: 9,
            tags: vec!["a".into(), "bc".into()],
            pose: Some([1.0, -2.0, f64::NAN]),
        }],
        pairs: vec![(1, -1), (65535, i32::MIN)],
        blob: vec![0, 255, 128],
        wide: u128::MAX,
        unit: (),
    };
    let framed = |op: u8, slot_len: usize, enc: &dyn Fn(&mut [u8]) -> usize| {
        let mut slot = vec![0u8; slot_len];
        let n = enc(&mut slot);
        let mut v = vec![op];
        v.extend_from_slice(&slot[..4 + n]);
        v
    };
    use shmbus::fuzzing::encode;
    c.put(
        "real-status",
        &framed(serde_op::DECODE_STATUS, 512, &|s| {
            encode(&status, s).unwrap()
        }),
    )?;
    c.put(
        "real-string",
        &framed(serde_op::DECODE_STRING, 64, &|s| {
            encode(&"hello, shmbus", s).unwrap()
        }),
    )?;
    c.put(
        "real-vec",
        &framed(serde_op::DECODE_VEC, 128, &|s| {
            encode(&vec![0u64, 1, 300, u64::MAX], s).unwrap()
        }),
    )?;
    c.put(
        "real-tuple",
        &framed(serde_op::DECODE_TUPLE, 64, &|s| {
            encode(&(3u8, Some(-7i32), Mode::Fault("x".into())), s).unwrap()
        }),
    )?;
    c.put(
        "edge-overrun",
        &[serde_op::FRAME, 0xff, 0xff, 0xff, 0xff, 1, 2],
    )?;
    c.put("edge-short", &[serde_op::FRAME, 1, 0])?;
    c.put(
        "encode-status",
        &[serde_op::ENCODE_STATUS, 0x00, 0x02, 0x41, 0x42, 0x43],
    )?;
    c.put(
        "encode-string-tiny",
        &[serde_op::ENCODE_STRING, 0x02, 0x00, 0x61, 0x62],
    )?;
    c.put(
        "encode-list",
        &[serde_op::ENCODE_LIST, 0x40, 0x00, 1, 2, 3, 4, 5, 6, 7, 8],
    )?;

    // cli_decode: real headers with slots of their kinds, and layouts given with --as.
    let c = Corpus::new(&root, "cli_decode")?;
    let cli_input = |header: &[u8], flags: u8, text: &str, slot: &[u8]| {
        let mut v = header.to_vec();
        v.push(flags);
        v.extend_from_slice(&(text.len() as u16).to_le_bytes());
        v.extend_from_slice(text.as_bytes());
        v.extend_from_slice(slot);
        v
    };
    let header = |n: &str| real.iter().find(|r| r.0 == n).map(|r| r.1.clone()).unwrap();
    let pose: Vec<u8> = [1.0f64, 2.5, -3.0]
        .iter()
        .flat_map(|x| x.to_ne_bytes())
        .collect();
    c.put("pose-known", &cli_input(&header("pose"), 0, "", &pose))?;
    c.put(
        "pose-as",
        &cli_input(&header("pose"), 1, "x:f64,y:f64,theta:f64", &pose),
    )?;
    let mut status_slot = vec![0u8; 512];
    let n = encode(&status, &mut status_slot).unwrap();
    status_slot.truncate(4 + n);
    c.put(
        "status-as",
        &cli_input(
            &header("status"),
            1,
            "seq:u64,stamp:i64,small:u8,flag:bool,ch:string,name:string",
            &status_slot,
        ),
    )?;
    c.put(
        "status-hex",
        &cli_input(&header("status"), 0, "", &status_slot),
    )?;
    c.put("frames", &cli_input(&header("frames"), 0, "", &slot))?;
    c.put(
        "frames-as",
        &cli_input(&header("frames"), 1, "a:u64,b:u64", &slot),
    )?;
    let mut job = vec![0u8; 64];
    let n = encode(&"job-1".to_string(), &mut job).unwrap();
    job.truncate(4 + n);
    c.put("jobs", &cli_input(&header("jobs"), 0, "", &job))?;
    c.put("grid", &cli_input(&header("grid"), 0, "", &[]))?;
    c.put(
        "count",
        &cli_input(&header("count"), 0, "", &7u64.to_ne_bytes()),
    )?;
    c.put(
        "spec-nested",
        &cli_input(
            &header("status"),
            1,
            "a:[{b:[string],c:i64?,d:[f64;3]}],e:[[u16]]",
            &[],
        ),
    )?;
    c.put(
        "type-name",
        &cli_input(
            &header("pose"),
            0,
            "alloc::vec::Vec<core::option::Option<u32>>",
            &[],
        ),
    )?;
    c.put(
        "pool-name",
        &cli_input(
            &header("pose"),
            0,
            "demo.frames.pool.00000000deadbeef.3",
            &[],
        ),
    )?;
    println!("seeds written under {}", root.display());
    Ok(())
}
