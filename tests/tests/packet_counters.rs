//! BPF_PROG_TEST_RUN of the counting programs: verdict, untouched bytes and map state.
use aya::programs::TestRun as _;
use bridgenet::datapath::Datapath;
use bridgenet_common::{IfCounters, programs};
use bridgenet_tests::{packet, require_root};

/// The loopback device: BPF_PROG_TEST_RUN runs a frame as if it came from it.
const LOOPBACK_IFINDEX: u32 = 1;
const TC_ACT_OK: u32 = 0;
const XDP_PASS: u32 = 2;

#[test]
fn tc_count_passes_the_frame_untouched_and_counts_it() {
    require_root();
    let mut dp = Datapath::load().expect("loading the datapath");
    let frame = packet::udp_frame([198, 18, 0, 1], 40000, [198, 18, 0, 2], 53, b"hello");

    let verdict = packet::run_tc(&mut dp, programs::TC_COUNT, &frame, 3).expect("test run");

    assert_eq!(verdict.action, TC_ACT_OK);
    assert_eq!(verdict.frame, frame, "a counter must not change the frame");
    let counters = dp.if_counters().expect("reading counters");
    assert_eq!(
        counters.get(&LOOPBACK_IFINDEX),
        Some(&IfCounters {
            packets: 3,
            bytes: 3 * frame.len() as u64
        })
    );
}

#[test]
fn xdp_count_passes_the_frame_untouched_and_counts_it() {
    require_root();
    let mut dp = Datapath::load().expect("loading the datapath");
    let frame = packet::tcp_syn_frame([198, 18, 0, 1], 40000, [198, 18, 0, 2], 80);

    let verdict = packet::run_xdp(&mut dp, programs::XDP_COUNT, &frame, 5).expect("test run");

    assert_eq!(verdict.action, XDP_PASS);
    assert_eq!(verdict.frame, frame);
    let counters = dp.if_counters().expect("reading counters");
    assert_eq!(
        counters.get(&LOOPBACK_IFINDEX),
        Some(&IfCounters {
            packets: 5,
            bytes: 5 * frame.len() as u64
        })
    );
}

#[test]
fn counters_add_up_across_frames_of_different_sizes() {
    require_root();
    let mut dp = Datapath::load().expect("loading the datapath");
    let mut expected = IfCounters::default();
    for size in [0usize, 1, 100, 1400] {
        let frame = packet::udp_frame([198, 18, 0, 1], 1, [198, 18, 0, 2], 2, &vec![0xab; size]);
        packet::run_tc(&mut dp, programs::TC_COUNT, &frame, 1).expect("test run");
        expected.packets += 1;
        expected.bytes += frame.len() as u64;
    }
    assert_eq!(
        dp.if_counters()
            .expect("reading counters")
            .get(&LOOPBACK_IFINDEX),
        Some(&expected)
    );
}

#[test]
fn a_frame_shorter_than_an_ethernet_header_is_refused_by_the_kernel_not_the_program() {
    require_root();
    let mut dp = Datapath::load().expect("loading the datapath");
    // The kernel rejects TC test runs on frames shorter than 14 bytes before the program runs.
    let program: &mut aya::programs::SchedClassifier = dp.program_mut(programs::TC_COUNT).unwrap();
    let mut opts = aya::programs::TestRunOptions::new();
    let short = [0u8; 10];
    opts.data_in = Some(&short);
    assert!(program.test_run(opts).is_err());
    assert!(dp.if_counters().expect("reading counters").is_empty());
}
