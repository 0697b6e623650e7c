//! The VSC inside a real guest: QEMU (TCG) boots Debian's kernel, the
//! guest's `vmblob` CLI drives the device with the virtio-pci transport
//! over `uio_pci_generic` (INTx and polling, two queues), the queues reach
//! the real `vmblob-vsp` through QEMU's vhost-user frontend, and the host
//! checks what landed in the store. Without QEMU these say SKIPPED
//! (`.ci/install-qemu` installs it; CI requires it).

use std::time::Duration;

use vmblob_integration::qemu::{self, GUEST_VMBLOB, VmOptions};
use vmblob_integration::{Sandbox, Vsp, VspOptions, vmblob_binary};
use vmblob_protocol::names::{BlobName, ContainerName};
use vmblob_protocol::ops::{BlobRef, Conditions, GetBlob, ListContainers};
use vmblob_vsp::store::fs::FsStore;
use vmblob_vsp::store::{BlobStore, DataSink, StoreError};

/// Over one 8 MiB block, with a ragged tail, so the put goes through parallel blocks (a
/// multiple of 4099, the guest's dd unit).
const BIG: usize = 4099 * 5200;
const SMALL: usize = 100 << 10;
/// A range that crosses the first block boundary (4 KiB units, for the guest's dd).
const RANGE: (usize, usize) = ((8 << 20) - 4096, 1 << 20);
const BOOT_LIMIT: Duration = Duration::from_secs(120);
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// The guest's step runner: each step prints `@@step NAME ok` or
/// `@@step NAME FAIL rc=N`, and its output as `@@out NAME: line`.
const STEPS: &str = r#"
step() {
    name=$1; shift
    "$@" > /tmp/step.out 2>&1
    rc=$?
    while IFS= read -r line; do echo "@@out $name: $line"; done < /tmp/step.out
    if [ $rc = 0 ]; then echo "@@step $name ok"; else echo "@@step $name FAIL rc=$rc"; fi
}
now() { cut -d' ' -f1 /proc/uptime; }
"#;

struct Outcome {
    serial: String,
}

impl Outcome {
    fn step_ok(&self, name: &str) -> bool {
        self.serial.lines().any(|l| l == format!("@@step {name} ok"))
    }

    fn output(&self, name: &str) -> Vec<String> {
        let prefix = format!("@@out {name}: ");
        self.serial.lines().filter_map(|l| l.strip_prefix(&prefix)).map(str::to_owned).collect()
    }

    fn sha256(&self, key: &str) -> Option<String> {
        let prefix = format!("@@sha256 {key} ");
        self.serial.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().to_owned())
    }

    fn value(&self, key: &str) -> Option<f64> {
        let prefix = format!("@@value {key} ");
        self.serial.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok())
    }
}

/// A GET's buffer that grows as the store fills it.
struct VecSink(Vec<u8>);

impl DataSink for VecSink {
    fn capacity(&self) -> u64 {
        1 << 30
    }
    fn fill_from_file(&mut self, file: &std::fs::File, offset: u64, len: u64) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt;
        let start = self.0.len();
        self.0.resize(start + len as usize, 0);
        file.read_exact_at(&mut self.0[start..], offset)?;
        Ok(())
    }
    fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

fn hex_sha256(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

fn read_blob(store: &FsStore, container: &str, name: &str) -> Option<Vec<u8>> {
    let target = BlobRef {
        container: ContainerName::new(container).expect("container name"),
        blob: BlobName::new(name).expect("blob name"),
    };
    let mut sink = VecSink(Vec::new());
    let req = GetBlob { target, range: None, conditions: Conditions::none() };
    store.get_blob(&req, &mut sink).ok().map(|_| sink.0)
}

fn assert_no_vsp_errors(vsp: &Vsp) {
    let logs = vsp.logs();
    let errors: Vec<&str> = logs.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "vmblob-vsp logged errors:\n{}", errors.join("\n"));
}

#[test]
fn guest_round_trip_over_virtio_pci() {
    let Some(rig) = qemu::rig_or_skip("guest_round_trip_over_virtio_pci") else { return };
    let sb = Sandbox::new();
    let mut vsp = Vsp::start(&sb.dir, VspOptions { queues: 2, ..VspOptions::default() });
    // The guest makes its data (an initramfs carrying it would slow every boot) and prints
    // its SHA-256, which the host checks against the store.
    let files = Vec::new();
    let v = format!("{GUEST_VMBLOB} -q --transport pci --queues 2 --ram-mib 64 --timeout-ms 30000");
    let script = format!(
        r#"{STEPS}
V="{v}"
P="$V --pci-poll-us 50"
# Without hugepages the DMA pool is refused (normal pages can migrate under the device's DMA),
# with the setting that would do, unless 4 KiB pages are allowed explicitly.
echo 0 > /proc/sys/vm/nr_hugepages
step no_hugepages sh -c "if $V ls 2>/tmp/nohuge; then exit 1; fi; grep -q 'vm.nr_hugepages=32' /tmp/nohuge"
step small_pages $V --allow-4k-pages mb cont0
# Hugepages keep the DMA pool physically contiguous and where the device was told it is.
echo 64 > /proc/sys/vm/nr_hugepages
mkdir -p /data
dd if=/dev/urandom of=/data/big bs=4099 count={big_units} 2>/dev/null
dd if=/dev/urandom of=/data/small bs=1024 count={small_k} 2>/dev/null
dd if=/data/big of=/data/range bs=4096 skip={range_skip} count={range_count} 2>/dev/null
tail -c 100 /data/big > /data/tail
echo "@@sha256 big $(sha256sum /data/big | cut -d' ' -f1)"
step mb $V mb cont1
t0=$(now); step put $V put /data/big cont1/dir/big; t1=$(now)
echo "@@value put_s $(echo "$t0 $t1" | awk '{{print $2 - $1}}')"
t0=$(now); step get $V get cont1/dir/big /tmp/big; t1=$(now)
echo "@@value get_s $(echo "$t0 $t1" | awk '{{print $2 - $1}}')"
step get_equal cmp /data/big /tmp/big
step range $V get --offset {ro} --length {rl} cont1/dir/big /tmp/range
step range_equal cmp /data/range /tmp/range
step tail $V get --offset {to} --length 1000 cont1/dir/big /tmp/tail
step tail_equal cmp /data/tail /tmp/tail
step ls $V ls cont1
step ls_r $V ls -r cont1
step stat $V stat cont1/dir/big
step poll_put $P put /data/small cont1/small
step poll_get $P get cont1/small /tmp/small
step poll_equal cmp /data/small /tmp/small
step poll_get_big $P get cont1/dir/big /tmp/big2
step poll_big_equal cmp /data/big /tmp/big2
step rm $V rm cont1/small
step stat_gone sh -c "$V stat cont1/small 2>&1 | grep -qi 'not found'"
step mb2 $V mb cont2
step put2 $V put /data/small cont2/x
step rb $V rb cont2
step ls_top $V ls
"#,
        ro = RANGE.0,
        rl = RANGE.1,
        to = BIG - 100,
        big_units = BIG / 4099,
        small_k = SMALL / 1024,
        range_skip = RANGE.0 / 4096,
        range_count = RANGE.1 / 4096,
    );
    let image = rig.image(vmblob_binary(), files, script);
    let mut vm = rig.boot(&sb.dir, vsp.socket(), &image, &VmOptions::default());
    let up = vm.wait_line(qemu::image::MARK_UP, BOOT_LIMIT).unwrap_or_else(|e| panic!("{e}\n{}", vm.report()));
    let boot = vm.started.elapsed();
    let code = vm.wait_done(RUN_LIMIT).unwrap_or_else(|e| panic!("{e}\n{}", vm.report()));
    let out = Outcome { serial: vm.serial() };
    let report = vm.report();
    let steps = [
        "no_hugepages",
        "small_pages",
        "mb",
        "put",
        "get",
        "get_equal",
        "range",
        "range_equal",
        "tail",
        "tail_equal",
        "ls",
        "ls_r",
        "stat",
        "poll_put",
        "poll_get",
        "poll_equal",
        "poll_get_big",
        "poll_big_equal",
        "rm",
        "stat_gone",
        "mb2",
        "put2",
        "rb",
        "ls_top",
    ];
    let failed: Vec<&str> = steps.iter().copied().filter(|s| !out.step_ok(s)).collect();
    assert!(failed.is_empty(), "guest steps failed: {failed:?} (script exit {code})\n{report}");
    assert!(out.output("ls").iter().any(|l| l.contains("dir/")), "ls cont1 shows dir/\n{report}");
    assert!(out.output("ls_r").iter().any(|l| l.contains("dir/big")), "ls -r cont1 shows dir/big\n{report}");
    assert!(out.output("stat").iter().any(|l| l.contains(&BIG.to_string())), "stat shows the size\n{report}");
    let top = out.output("ls_top");
    assert!(
        top.iter().any(|l| l.contains("cont0"))
            && top.iter().any(|l| l.contains("cont1"))
            && !top.iter().any(|l| l.contains("cont2")),
        "ls after rb (cont0 made on 4 KiB pages)\n{report}"
    );
    let (put_s, get_s) = (out.value("put_s").unwrap_or(0.0), out.value("get_s").unwrap_or(0.0));
    eprintln!(
        "qemu guest: {} boot to init {:.1} s ({up}); put {:.1} MiB/s, get {:.1} MiB/s under TCG",
        rig.qemu_version,
        boot.as_secs_f64(),
        BIG as f64 / (1 << 20) as f64 / put_s.max(0.001),
        BIG as f64 / (1 << 20) as f64 / get_s.max(0.001),
    );

    // The host's view: the store holds exactly what the guest wrote.
    vsp.stop();
    assert_no_vsp_errors(&vsp);
    let store = FsStore::open(vsp.store()).expect("open the store the VSP served");
    let guest_sha = out.sha256("big").unwrap_or_else(|| panic!("the guest printed no SHA-256\n{report}"));
    assert_eq!(
        read_blob(&store, "cont1", "dir/big").map(|b| hex_sha256(&b)),
        Some(guest_sha),
        "cont1/dir/big in the store equals the guest's file"
    );
    assert!(read_blob(&store, "cont1", "small").is_none(), "cont1/small was removed");
    let page = store
        .list_containers(&ListContainers {
            prefix: String::new(),
            marker: String::new(),
            max_results: 0,
            include_metadata: false,
        })
        .expect("list containers");
    let names: Vec<String> = page.items.iter().map(|c| c.name.to_string()).collect();
    assert_eq!(names, ["cont0", "cont1"], "cont0 (made on 4 KiB pages) and cont1 are left, cont2 is gone");
}

/// Iterations of the restart run's put loop.
const ROUNDS: usize = 12;
/// VSP restarts, one in each of rounds 2..=RESTARTS+1: SIGKILL and SIGTERM by turns.
const RESTARTS: usize = 10;
/// Big enough that a put has several blocks in flight for a while under TCG.
const ROUND_BYTES: usize = 40 << 20;

/// QEMU keeps the vhost-user inflight region across the VSP's restarts (crash
/// or upgrade), so the guest never notices one: every put and get of the loop
/// succeeds, the guest's driver sees no completion twice (a duplicate is a
/// corrupt used ring to it, failing requests) and none goes missing (a missing
/// one times out).
#[test]
fn guest_sees_no_error_across_vsp_restarts() {
    let Some(rig) = qemu::rig_or_skip("guest_sees_no_error_across_vsp_restarts") else { return };
    let sb = Sandbox::new();
    let mut vsp = Vsp::start(&sb.dir, VspOptions { queues: 2, ..VspOptions::default() });
    // Two versions, alternating by round, so a request re-run from another round would show.
    let files = Vec::new();
    let v = format!("{GUEST_VMBLOB} -q --transport pci --queues 2 --ram-mib 96 --timeout-ms 15000");
    let script = format!(
        r#"{STEPS}
V="{v}"
echo 64 > /proc/sys/vm/nr_hugepages
mkdir -p /data
dd if=/dev/urandom of=/data/a bs=1M count={mib} 2>/dev/null
dd if=/dev/urandom of=/data/b bs=1M count={mib} 2>/dev/null
echo "@@sha256 a $(sha256sum /data/a | cut -d' ' -f1)"
echo "@@sha256 b $(sha256sum /data/b | cut -d' ' -f1)"
step mb $V mb cont1
i=0
while [ $i -lt {ROUNDS} ]; do
    i=$((i + 1))
    f=/data/a; [ $((i % 2)) = 0 ] && f=/data/b
    echo "@@round $i start"
    timeout 60 $V put $f cont1/r$i > /tmp/put.out 2>&1
    rc=$?
    while IFS= read -r line; do echo "@@out put$i: $line"; done < /tmp/put.out
    echo "@@round $i get"
    timeout 60 $V get cont1/r$i /tmp/g > /tmp/get.out 2>&1
    grc=$?
    while IFS= read -r line; do echo "@@out get$i: $line"; done < /tmp/get.out
    g=bad; [ $grc = 0 ] && cmp -s $f /tmp/g && g=equal
    rm -f /tmp/g
    echo "@@round $i put=$rc get=$g"
done
"#,
        mib = ROUND_BYTES >> 20,
    );
    let image = rig.image(vmblob_binary(), files, script);
    let options = VmOptions { reconnect_ms: Some(200), ..VmOptions::default() };
    let mut vm = rig.boot(&sb.dir, vsp.socket(), &image, &options);
    let fail = |vm: &qemu::GuestVm, e: String| -> ! { panic!("{e}\n{}", vm.report()) };
    // Each restart comes while the VSP is writing a block of the round's put (a file in the
    // store's tmp/), or a little into the round's get; SIGKILL and SIGTERM by turns.
    let tmp = vsp.store().join("tmp");
    for k in 0..RESTARTS {
        let round = k + 2;
        vm.wait_line(&format!("@@round {round} start"), BOOT_LIMIT + RUN_LIMIT).unwrap_or_else(|e| fail(&vm, e));
        let writing = || std::fs::read_dir(&tmp).is_ok_and(|mut d| d.next().is_some());
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !writing() {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the VSP never wrote a block\n{}",
                vm.report()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        if k % 4 >= 2 {
            // Or somewhere in the get phase: between two CLI runs, during the device's reset, or
            // with reads in flight (under TCG the put seldom has more than one block in flight,
            // the guest copying each; the put-phase restarts are the ones that catch requests).
            vm.wait_line(&format!("@@round {round} get"), RUN_LIMIT).unwrap_or_else(|e| fail(&vm, e));
            std::thread::sleep(Duration::from_millis(300 + 100 * (k as u64 % 3)));
        }
        if k % 2 == 0 {
            vsp.kill();
        } else {
            vsp.stop();
        }
        vsp.restart();
    }
    let code = vm.wait_done(RUN_LIMIT).unwrap_or_else(|e| fail(&vm, e));
    let serial = vm.serial();
    let report = vm.report();
    eprintln!(
        "restart run: guest serial\n{}",
        serial.lines().filter(|l| l.starts_with("@@")).collect::<Vec<_>>().join("\n")
    );
    let rounds: Vec<(usize, String, String)> = serial
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("@@round ")?;
            let mut f = rest.split_whitespace();
            let n = f.next()?.parse().ok()?;
            let put = f.next()?.strip_prefix("put=")?.to_owned();
            let get = f.next()?.strip_prefix("get=")?.to_owned();
            Some((n, put, get))
        })
        .collect();
    assert_eq!(rounds.len(), ROUNDS, "every round ended (script exit {code})\n{report}");
    for (n, put, get) in &rounds {
        assert!(put == "0" && get == "equal", "round {n}: put exit {put}, get {get}: the guest saw an error\n{report}");
    }
    let complaints: Vec<&str> = serial.lines().filter(|l| l.starts_with("@@out ")).collect();
    assert!(complaints.is_empty(), "the CLI reported nothing: {complaints:?}\n{report}");

    // The VSP's view: each restart found the requests the old VSP had taken in the region.
    vsp.stop();
    assert_no_vsp_errors(&vsp);
    let logs = vsp.logs();
    let seen: Vec<&str> = logs
        .lines()
        .filter(|l| {
            ["vmblob-vsp life", "in flight at the restart", "shutdown: "].iter().any(|k| l.contains(k))
                && !l.contains(" 0 in-flight requests")
        })
        .collect();
    eprintln!("restart run, the VSP's view:\n{}", seen.join("\n"));
    let resubmitted: usize = logs
        .lines()
        .filter_map(|l| l.split("inflight region: ").nth(1)?.split_whitespace().next()?.parse::<usize>().ok())
        .sum();
    eprintln!("restart run: {RESTARTS} restarts, {resubmitted} requests resubmitted from the region");
    assert!(resubmitted > 0, "some restart caught requests in flight\n{logs}");
    assert!(!logs.contains("shutdown: completed"), "no request was rescinded at a stop\n{logs}");

    // The store: every round holds its own version.
    let store = FsStore::open(vsp.store()).expect("open the store");
    let out = Outcome { serial: serial.clone() };
    let versions = [out.sha256("a"), out.sha256("b")].map(|v| v.unwrap_or_else(|| panic!("no SHA-256\n{report}")));
    for (n, _, _) in &rounds {
        let want = &versions[(n + 1) % 2];
        let got = read_blob(&store, "cont1", &format!("r{n}")).unwrap_or_else(|| panic!("round {n}: blob missing"));
        assert!(&hex_sha256(&got) == want, "round {n}: the stored blob is not the version written");
    }
}

#[test]
fn guest_survives_a_surprise_removal_of_the_device() {
    let Some(rig) = qemu::rig_or_skip("guest_survives_a_surprise_removal_of_the_device") else { return };
    let sb = Sandbox::new();
    let mut vsp = Vsp::start(&sb.dir, VspOptions { queues: 2, ..VspOptions::default() });
    // -v: the transport's warning says how many requests were pending when the device went.
    let v = format!("{GUEST_VMBLOB} -q -v --transport pci --queues 2 --ram-mib 96 --timeout-ms 30000");
    let script = format!(
        r#"{STEPS}
V="{v}"
echo 64 > /proc/sys/vm/nr_hugepages
mkdir -p /data
dd if=/dev/urandom of=/data/f bs=1M count=96 2>/dev/null
echo "@@sha256 f $(sha256sum /data/f | cut -d' ' -f1)"
step mb $V mb cont1
# Puts back to back, so the removal (pciehp powers the slot off 5 s after the button) comes
# while one has blocks in flight; the loop ends at the first failure.
(
    i=0
    while [ $i -lt 40 ]; do
        i=$((i + 1))
        timeout 60 $V put /data/f cont1/r$i > /tmp/o 2>&1
        rc=$?
        echo "@@put $i rc=$rc $(grep -v hugepages /tmp/o | tr '\n' ' ' | head -c 400)"
        [ $rc = 0 ] || break
    done
) &
pid=$!
sleep 1
echo "@@unplug now"
wait $pid
sleep 1
t0=$(now)
timeout 30 $V ls > /tmp/o 2>&1
rc=$?
t1=$(now)
echo "@@after rc=$rc secs=$(echo "$t0 $t1" | awk '{{print $2 - $1}}') $(head -c 160 /tmp/o)"
"#
    );
    let image = rig.image(vmblob_binary(), Vec::new(), script);
    let mut vm = rig.boot(&sb.dir, vsp.socket(), &image, &VmOptions { hotplug: true, ..VmOptions::default() });
    vm.wait_line("@@unplug now", BOOT_LIMIT).unwrap_or_else(|e| panic!("{e}\n{}", vm.report()));
    let answer = vm.unplug().unwrap_or_else(|e| panic!("{e}\n{}", vm.report()));
    assert!(answer.contains("\"return\""), "device_del: {answer}\n{}", vm.report());
    let code = vm.wait_done(RUN_LIMIT).unwrap_or_else(|e| panic!("{e}\n{}", vm.report()));
    let serial = vm.serial();
    let report = vm.report();
    eprintln!(
        "removal run (script exit {code}):\n{}",
        serial.lines().filter(|l| l.starts_with("@@")).collect::<Vec<_>>().join("\n")
    );
    let puts: Vec<(usize, String, String)> = serial
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("@@put ")?;
            let (n, rest) = rest.split_once(' ')?;
            let (rc, msg) = rest.split_once(' ').unwrap_or((rest, ""));
            Some((n.parse().ok()?, rc.strip_prefix("rc=")?.to_owned(), msg.to_owned()))
        })
        .collect();
    let (last, before) = puts.split_last().unwrap_or_else(|| panic!("no put ran\n{report}"));
    assert!(before.iter().all(|p| p.1 == "0"), "puts before the removal succeed\n{report}");
    // The put the removal interrupts (or the first after it) fails as unavailable: not a hang
    // (124), not a crash (128 + signal).
    // 5 when it was refused, 6 when it was sent and its answer was lost with the device.
    assert!(last.1 == "5" || last.1 == "6", "the interrupted put exits UNAVAILABLE or OUTCOME_UNKNOWN\n{report}");
    assert!(puts.len() < 40, "the device went away during the run\n{report}");
    let after = serial.lines().find_map(|l| l.strip_prefix("@@after ")).unwrap_or_else(|| panic!("{report}"));
    assert!(after.starts_with("rc=5 "), "with no device the CLI says unavailable at once: {after}\n{report}");
    let secs: f64 = after.split("secs=").nth(1).and_then(|r| r.split_whitespace().next()?.parse().ok()).unwrap_or(99.0);
    assert!(secs < 10.0, "and does not wait: {after}");

    vsp.stop();
    assert_no_vsp_errors(&vsp);
    let store = FsStore::open(vsp.store()).expect("open the store");
    let sha = Outcome { serial: serial.clone() }.sha256("f").unwrap_or_else(|| panic!("{report}"));
    for (n, rc, _) in &puts {
        match read_blob(&store, "cont1", &format!("r{n}")) {
            Some(b) => assert_eq!(hex_sha256(&b), sha, "round {n}: the stored blob is the file"),
            None => assert!(rc != "0", "round {n}: acknowledged but missing"),
        }
    }
}
