//! Frames built with etherparse, and BPF_PROG_TEST_RUN of the real programs on them.
use aya::programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp};
use bridgenet::datapath::Datapath;
use etherparse::PacketBuilder;

/// What a program did with one frame.
#[derive(Debug)]
pub struct Verdict {
    pub action: u32,
    pub frame: Vec<u8>,
}

/// An Ethernet/IPv4/UDP frame carrying `payload`.
pub fn udp_frame(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, 64)
        .udp(sport, dport);
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut frame, payload)
        .expect("building a UDP frame");
    frame
}

/// An Ethernet/IPv4/TCP SYN frame.
pub fn tcp_syn_frame(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 64240)
        .syn();
    let mut frame = Vec::with_capacity(builder.size(0));
    builder
        .write(&mut frame, &[])
        .expect("building a TCP frame");
    frame
}

/// Runs TC program `name` once on `frame` (`repeat` times when given) and returns its verdict
/// and output frame.
pub fn run_tc(
    dp: &mut Datapath,
    name: &str,
    frame: &[u8],
    repeat: u32,
) -> Result<Verdict, ProgramError> {
    let program: &mut SchedClassifier = dp
        .ebpf_mut()
        .program_mut(name)
        .expect("program in object")
        .try_into()
        .expect("a TC program");
    run(program, frame, repeat)
}

/// Runs XDP program `name` on `frame`.
pub fn run_xdp(
    dp: &mut Datapath,
    name: &str,
    frame: &[u8],
    repeat: u32,
) -> Result<Verdict, ProgramError> {
    let program: &mut Xdp = dp
        .ebpf_mut()
        .program_mut(name)
        .expect("program in object")
        .try_into()
        .expect("an XDP program");
    run(program, frame, repeat)
}

fn run<P>(program: &mut P, frame: &[u8], repeat: u32) -> Result<Verdict, ProgramError>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    // Room for programs that grow the frame (encapsulation, ICMP errors).
    let mut out = vec![0u8; frame.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    opts.repeat = repeat.max(1);
    let result = program.test_run(opts)?;
    out.truncate(result.data_size_out as usize);
    Ok(Verdict {
        action: result.return_value,
        frame: out,
    })
}
