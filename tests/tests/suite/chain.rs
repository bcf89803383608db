//! The swarm chain's failover, in process and in seconds: a tiny random 6-layer model served in
//! parts by real servers over in-memory pipes (`ait_tests::chain_fixture`), one fault injected
//! per test. Every recovery must leave the output bit-identical to an uninterrupted run and to
//! a `LocalChain` over the same model.
//!
//! Servers are listed as `(blocks, ms_per_block)`: the announced speed makes routing prefer
//! the fast ones ([`FAST`]) over the spares ([`SPARE`]) until a fault bans a server.
//!
//! The hostile-server tests (issue 11) check that answers are sanity-checked (NaN, absurd
//! norms), that a server stalling its steps is given up within a bound, that recoveries have
//! a total deadline, that status answers are read with a small limit, and that claimed speeds
//! lose to measured ones and never beat the node's own server.

use std::ops::Range;
use std::time::{Duration, Instant};

use ait_tests::chain_fixture::{quick_options, Fault, Fixture, TestDiscovery, FAULT_CLASSES};
use web_node::client::LayerChain;
use web_node::net::chain::{AuditError, ReportRefused};
use web_node::net::chain::{ChainError, ChainOptions, Recovery, SwarmChain, MAX_HIDDEN_RMS};
use web_node::net::routing::Hop;
use web_node::trust::{
    output_hash, AuditDraw, FraudReport, InputChain, Reputation, SignedReceipt, Verdict, DELTA_LIMIT, QUORUM,
};

/// Announced speed of the servers routing picks first.
const FAST: f64 = 0.01;
/// Announced speed of the spares: picked only once a fast server is banned.
const SPARE: f64 = 2.0;

const PROMPT: [u32; 5] = [3, 17, 42, 99, 7];
const DECODE: [u32; 4] = [11, 64, 5, 120];

/// Steps a server answers well before its fault: the prefill and the first decode step.
const AFTER: usize = 2;

/// Short timeouts, so that a frozen server costs well under a second.
fn opts() -> ChainOptions {
    quick_options()
}

/// The outputs of a prefill of [`PROMPT`] and a decode step per token of [`DECODE`].
async fn outputs<C: LayerChain>(fx: &Fixture, chain: &mut C) -> Result<Vec<Vec<f32>>, C::Error> {
    fx.outputs(chain, &PROMPT, &DECODE).await
}

/// What a swarm run left behind.
struct Run {
    outputs: Vec<Vec<f32>>,
    route: Vec<Hop>,
    recoveries: Vec<Recovery>,
    receipts: Vec<(Hop, Vec<SignedReceipt>)>,
}

async fn swarm_run(fx: &Fixture) -> Run {
    let mut chain: SwarmChain<TestDiscovery> = fx.chain(opts());
    let outputs = outputs(fx, &mut chain).await.expect("the swarm chain runs");
    let route = chain.route();
    chain.end().await.expect("end");
    Run { outputs, route, recoveries: chain.recoveries().to_vec(), receipts: chain.receipts() }
}

fn assert_bits_equal(what: &str, a: &[Vec<f32>], b: &[Vec<f32>]) {
    assert_eq!(a.len(), b.len(), "{what}: step count");
    for (step, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.len(), y.len(), "{what}: step {step}: length");
        if let Some(i) = x.iter().zip(y).position(|(p, q)| p.to_bits() != q.to_bits()) {
            panic!("{what}: step {step}: value {i} differs: {} vs {}", x[i], y[i]);
        }
    }
}

fn hops(fx: &Fixture, route: &[(usize, Range<usize>)]) -> Vec<Hop> {
    route.iter().map(|(i, blocks)| Hop { peer: fx.peer(*i), blocks: blocks.clone() }).collect()
}

/// Serves `servers`, checks an uninterrupted run against the local chain (and its route
/// against `route`), then gives server `faulty` its `fault` and runs again: the output must
/// not change. Returns the fixture and the faulty run.
async fn with_fault(
    servers: &[(Range<usize>, f64)],
    route: &[(usize, Range<usize>)],
    faulty: usize,
    fault: Fault,
    after: usize,
) -> (Fixture, Run) {
    let fx = Fixture::new(7, servers);
    let reference = outputs(&fx, &mut fx.local_chain()).await.expect("the local chain runs");
    let clean = swarm_run(&fx).await;
    assert_eq!(clean.route, hops(&fx, route), "the uninterrupted route");
    assert!(clean.recoveries.is_empty(), "recoveries without a fault: {:?}", clean.recoveries);
    assert_bits_equal("uninterrupted swarm vs local chain", &clean.outputs, &reference);

    fx.set_fault(faulty, fault, after);
    let started = Instant::now();
    let run = swarm_run(&fx).await;
    eprintln!("{fault:?}: {:.0} ms, recoveries {:?}", started.elapsed().as_secs_f64() * 1e3, run.recoveries);
    assert_bits_equal(&format!("{fault:?} vs local chain"), &run.outputs, &reference);
    (fx, run)
}

/// Three fast servers `[0,2) [2,4) [4,6)` and a spare for the middle span.
const WITH_SPARE: [(Range<usize>, f64); 4] = [(0..2, FAST), (2..4, FAST), (4..6, FAST), (2..4, SPARE)];
const FIRST_ROUTE: [(usize, Range<usize>); 3] = [(0, 0..2), (1, 2..4), (2, 4..6)];
const SPARE_ROUTE: [(usize, Range<usize>); 3] = [(0, 0..2), (3, 2..4), (2, 4..6)];

/// Server 1 (`[2,4)`) fails with `fault`: the spare takes over its span alone.
async fn spare_takes_over(fault: Fault) {
    let (fx, run) = with_fault(&WITH_SPARE, &FIRST_ROUTE, 1, fault, AFTER).await;
    assert_eq!(run.route, hops(&fx, &SPARE_ROUTE), "{fault:?}: route after the recovery");
    let [r] = &run.recoveries[..] else { panic!("{fault:?}: one recovery expected: {:?}", run.recoveries) };
    assert_eq!((r.failed, r.blocks.clone(), r.rerouted.clone()), (fx.peer(1), 2..4, 2..4));
    assert_eq!(r.replacements, fx.peers(&[3]));
    assert_eq!(r.replayed_tokens, PROMPT.len() + AFTER - 1, "{fault:?}: tokens before the failed step");
}

/// Every failure counts against a server's record in the node's reputation book, which all
/// of the node's chains share: a stranger that fails five sessions in a row is left out of
/// every later route (bans last one chain; the book lasts), and the spare that served them
/// builds a record.
#[tokio::test]
async fn a_server_that_keeps_failing_is_left_out_of_every_chain_that_shares_the_book() {
    let fx = Fixture::new(7, &WITH_SPARE);
    let reference = outputs(&fx, &mut fx.local_chain()).await.expect("the local chain runs");
    fx.set_fault(1, Fault::Close, 0);
    let book = Reputation::new();
    for run in 1..=6 {
        let mut chain = fx.chain(ChainOptions { reputation: book.clone(), ..opts() });
        let outs = outputs(&fx, &mut chain).await.expect("the spare takes over");
        chain.end().await.expect("end");
        assert_bits_equal("after failures", &outs, &reference);
        let failed = chain.recoveries().iter().map(|r| r.failed).collect::<Vec<_>>();
        let rating = book.rating(&fx.peer(1));
        if run <= 5 {
            assert_eq!(failed, [fx.peer(1)], "run {run}: the fastest server is tried, {rating:?}");
            assert_eq!(rating.games, run, "run {run}");
        } else {
            assert!(failed.is_empty(), "run {run}: the failing server is left out");
            assert!(!fx.peers(&[1]).contains(&chain.audit_cases()[1].hop.peer));
        }
        assert_eq!(book.excluded(&fx.peer(1)), run >= 5, "run {run}: {rating:?}");
    }
    let spare = book.rating(&fx.peer(3));
    assert_eq!(spare.games, 6);
    assert!(spare.rating > 1500.0 && book.trust(&fx.peer(3)) < 1.0, "{spare:?}");
}

#[tokio::test]
async fn uninterrupted_swarm_chain_equals_local_chain() {
    let fx = Fixture::new(7, &WITH_SPARE);
    let reference = outputs(&fx, &mut fx.local_chain()).await.expect("the local chain runs");
    let run = swarm_run(&fx).await;
    assert_eq!(run.route, hops(&fx, &FIRST_ROUTE));
    assert_bits_equal("swarm vs local chain", &run.outputs, &reference);
    assert_eq!(fx.steps(3), 0, "the spare was used");

    // Every step of every hop came with its node's receipt, kept in order: the prefill, then
    // one per decode step; the first hop's inputs are the embeddings, the last hop's outputs
    // what the client got.
    assert_eq!(run.receipts.iter().map(|(h, _)| h.clone()).collect::<Vec<_>>(), run.route);
    for (i, (hop, receipts)) in run.receipts.iter().enumerate() {
        let shape: Vec<(u32, u32)> = receipts.iter().map(|r| (r.receipt.pos, r.receipt.n_tokens)).collect();
        assert_eq!(shape, [(0, 5), (5, 1), (6, 1), (7, 1), (8, 1)], "hop {i}");
        let other = run.route[(i + 1) % run.route.len()].peer;
        for r in receipts {
            assert_eq!((r.receipt.start as usize, r.receipt.end as usize), (hop.blocks.start, hop.blocks.end));
            r.receipt.verify(&hop.peer, &r.signature).expect("the hop's receipt verifies");
            assert!(r.receipt.verify(&other, &r.signature).is_err(), "another node's key verifies it");
        }
        assert!(receipts.iter().all(|r| r.receipt.session == receipts[0].receipt.session));
    }
    let first = &run.receipts[0].1;
    let mut inputs = InputChain::new(&first[0].receipt.session);
    inputs.absorb(&fx.embed(&PROMPT), fx.config().hidden);
    assert_eq!(first[0].receipt.inputs, inputs.value());
    for (t, r) in DECODE.iter().zip(&first[1..]) {
        inputs.absorb(&fx.embed(&[*t]), fx.config().hidden);
        assert_eq!(r.receipt.inputs, inputs.value());
    }
    let last = &run.receipts[2].1;
    for (r, out) in last.iter().zip(&run.outputs) {
        assert_eq!(r.receipt.output, output_hash(out));
    }
    // Sessions differ: another run names another session.
    assert_ne!(swarm_run(&fx).await.receipts[0].1[0].receipt.session, first[0].receipt.session);
}

#[tokio::test]
async fn error_frame_moves_the_span_to_a_spare() {
    spare_takes_over(Fault::Error).await;
}

#[tokio::test]
async fn closed_stream_moves_the_span_to_a_spare() {
    spare_takes_over(Fault::Close).await;
}

#[tokio::test]
async fn frozen_server_moves_the_span_to_a_spare() {
    spare_takes_over(Fault::Freeze).await;
}

#[tokio::test]
async fn wrong_number_of_values_moves_the_span_to_a_spare() {
    spare_takes_over(Fault::WrongLength).await;
}

#[tokio::test]
async fn undecodable_answer_moves_the_span_to_a_spare() {
    spare_takes_over(Fault::Undecodable).await;
}

#[tokio::test]
async fn non_finite_answer_moves_the_span_to_a_spare() {
    spare_takes_over(Fault::NotFinite).await;
}

#[tokio::test]
async fn absurd_norm_answer_moves_the_span_to_a_spare() {
    spare_takes_over(Fault::Absurd).await;
}

/// An answer changed after the node signed its receipt (by the node, or on the way) fails
/// the receipt's check.
#[tokio::test]
async fn an_answer_that_is_not_what_the_node_signed_moves_the_span_to_a_spare() {
    spare_takes_over(Fault::Tampered).await;
}

#[tokio::test]
async fn an_unsigned_answer_moves_the_span_to_a_spare() {
    spare_takes_over(Fault::Unsigned).await;
}

/// Runs [`outputs`] on a fresh chain and ends it, keeping the chain for audits.
async fn ended_run(fx: &Fixture) -> (SwarmChain<TestDiscovery>, Vec<Vec<f32>>) {
    ended_run_with(fx, opts()).await
}

/// [`ended_run`] with other options.
async fn ended_run_with(fx: &Fixture, opts: ChainOptions) -> (SwarmChain<TestDiscovery>, Vec<Vec<f32>>) {
    let mut chain: SwarmChain<TestDiscovery> = fx.chain(opts);
    let outs = outputs(fx, &mut chain).await.expect("the swarm chain runs");
    chain.end().await.expect("end");
    (chain, outs)
}

/// An honest hop audited on the spare of its layers (same backend) deviates by nothing; the
/// audit checks every step at once, refuses evidence that is not what the node signed, and
/// needs another server of exactly the hop's layers.
#[tokio::test]
async fn an_audit_of_an_honest_hop_replays_its_inputs_on_a_spare_and_finds_no_deviation() {
    let fx = Fixture::new(7, &WITH_SPARE);
    let (mut chain, _) = ended_run(&fx).await;
    let cases = chain.audit_cases().to_vec();
    assert_eq!(cases.iter().map(|c| c.hop.clone()).collect::<Vec<_>>(), hops(&fx, &FIRST_ROUTE));
    let case = &cases[1];
    let last = case.receipts.len() - 1;
    // The draw is a function of the secret and the signed receipts: repeatable in a test.
    let draw = AuditDraw::seeded(1.0, [5; 32]);
    assert_eq!(draw.draw(&case.receipts), draw.draw(&case.receipts));
    assert!(AuditDraw::seeded(0.0, [5; 32]).draw(&case.receipts).is_none());

    let steps_before = fx.steps(3);
    let outcome = chain.audit(case, last).await.expect("the audit runs");
    assert_eq!(outcome.audited, case.hop);
    let [opinion] = &outcome.opinions[..] else { panic!("one opinion clears a node: {outcome:?}") };
    assert_eq!(opinion.auditor, fx.peer(3));
    assert_eq!(outcome.tokens, PROMPT.len() + DECODE.len(), "one replay checks every step");
    assert!(outcome.passed() && opinion.deviation.worst == 0.0, "honest hop accused: {outcome:?}");
    assert_eq!(fx.steps(3), steps_before + 1, "the audit is one prefill on the spare");
    // Up to an earlier step: fewer tokens.
    let early = chain.audit(case, 1).await.expect("the audit runs");
    assert_eq!(early.tokens, PROMPT.len() + 1);

    // Evidence the node did not sign is refused before anyone is asked.
    let mut forged = case.clone();
    forged.outputs[3] += 1.0;
    assert!(matches!(chain.audit(&forged, last).await, Err(AuditError::Evidence(_))));
    let mut forged = case.clone();
    forged.inputs[0] += 1.0;
    assert!(matches!(chain.audit(&forged, last).await, Err(AuditError::Evidence(_))));
    assert!(matches!(chain.audit(case, last + 1).await, Err(AuditError::Evidence(_))));
    assert_eq!(fx.steps(3), steps_before + 2, "a refused audit reached the spare");
    // Nobody else serves [0, 2).
    assert!(matches!(chain.audit(&cases[0], last).await, Err(AuditError::NoAuditor { .. })));
}

/// A node audits the remote hops of its answers, not its own server's (others check that
/// one): with every session drawn, the `[2, 4)` hop is replayed on the spare when a remote
/// server ran it, and not at all when the node's own server did.
#[tokio::test]
async fn a_node_audits_remote_hops_but_not_its_own_server() {
    let fx = Fixture::new(7, &WITH_SPARE);
    for (local, expected) in [(None, vec![fx.peer(1)]), (Some(1), vec![])] {
        let chain = match local {
            None => fx.chain(opts()),
            Some(l) => fx.chain_with_local(opts(), l),
        };
        let mut chain = chain.with_audits(AuditDraw::seeded(1.0, [5; 32]));
        outputs(&fx, &mut chain).await.expect("runs");
        assert_eq!(chain.route(), hops(&fx, &FIRST_ROUTE));
        chain.end().await.expect("end");
        let before = fx.steps(3);
        let found = chain.run_audits().await;
        let audited: Vec<_> = found.iter().filter_map(|f| f.as_ref().ok()).map(|a| a.audited.peer).collect();
        assert_eq!(audited, expected, "local server {local:?}: {found:?}");
        // The other two hops have no second server: their audits could not be made.
        assert_eq!(found.len(), 2 + expected.len(), "{found:?}");
        assert_eq!(fx.steps(3) - before, expected.len(), "replays on the spare");
    }
}

/// A node that adds noise of a thousandth and signs for it passes every check a client makes
/// on its own (its receipts verify, its answers are sane), and only an audit catches it: the
/// first auditor fails it, a second opinion agrees, and it is judged faulty and banned; the
/// next generation routes around it and is exact again.
#[tokio::test]
async fn a_node_that_lies_and_signs_for_it_is_caught_by_an_audit_and_routed_around() {
    let fx = Fixture::new(7, &[(0..2, FAST), (2..4, FAST), (4..6, FAST), (2..4, SPARE), (2..4, SPARE)]);
    let reference = outputs(&fx, &mut fx.local_chain()).await.expect("the local chain runs");
    fx.set_fault(1, Fault::Lie, 0);
    let book = Reputation::new();
    let (mut chain, outs) = ended_run_with(&fx, ChainOptions { reputation: book.clone(), ..opts() }).await;
    assert!(chain.recoveries().is_empty(), "the lie was noticed without an audit");
    for i in 0..3 {
        assert_eq!(book.rating(&fx.peer(i)).games, 1, "each hop served its session to the end");
    }
    let cases = chain.audit_cases().to_vec();
    let case = &cases[1];
    assert_eq!(case.hop, hops(&fx, &FIRST_ROUTE)[1]);
    for r in &case.receipts {
        r.receipt.verify(&fx.peer(1), &r.signature).expect("the liar's receipts verify");
    }
    assert_ne!(outs, reference, "the lie changed nothing");

    let outcome = chain.audit(case, case.receipts.len() - 1).await.expect("the audit runs");
    assert_eq!(outcome.verdict, Verdict::Faulty, "{outcome:?}");
    assert_eq!(outcome.opinions.len(), QUORUM, "two agreeing failures settle it");
    for o in &outcome.opinions {
        assert!(!o.passed && o.deviation.worst > 10.0 * DELTA_LIMIT, "{outcome:?}");
    }
    eprintln!("the liar deviates by {:.3e} at worst", outcome.opinions[0].deviation.worst);
    assert!(chain.is_banned(&fx.peer(1)));
    assert!(!chain.is_banned(&fx.peer(3)) && !chain.is_banned(&fx.peer(4)));
    let liar = book.rating(&fx.peer(1));
    assert!(liar.convicted && book.excluded(&fx.peer(1)), "{liar:?}");
    assert!(!book.rating(&fx.peer(3)).convicted && !book.rating(&fx.peer(4)).convicted);

    // The next generation takes a spare and is exact.
    let again = outputs(&fx, &mut chain).await.expect("the swarm chain runs");
    let middle = chain.route()[1].peer;
    assert!(fx.peers(&[3, 4]).contains(&middle), "{middle} took the span");
    chain.end().await.expect("end");
    assert_bits_equal("after the audit", &again, &reference);

    // Every chain that shares the book leaves the liar out from its first route, bans or
    // not; a chain with a book of its own still takes the liar (the fastest server).
    let mut other = fx.chain(ChainOptions { reputation: book.clone(), ..opts() });
    let exact = outputs(&fx, &mut other).await.expect("another chain runs");
    assert!(!other.is_banned(&fx.peer(1)) && fx.peers(&[3, 4]).contains(&other.route()[1].peer));
    other.end().await.expect("end");
    assert_bits_equal("another chain of the same book", &exact, &reference);
    let (stranger, _) = ended_run(&fx).await;
    assert_eq!(stranger.audit_cases()[1].hop.peer, fx.peer(1));
}

/// A faulty verdict leaves a fraud report that another client checks and recomputes on a
/// server of its own choosing: it convicts the liar in that client's book too, counts once,
/// and survives the wire. Forged reports change nothing; a report by two colluding auditors
/// framing an honest node convicts the auditors, not the node.
#[tokio::test]
async fn a_fraud_report_convicts_the_liar_for_whoever_recomputes_it_and_forgeries_convict_nobody() {
    let servers = [(0..2, FAST), (2..4, FAST), (4..6, FAST), (2..4, SPARE), (2..4, SPARE), (2..4, SPARE)];
    let fx = Fixture::new(7, &servers);
    fx.set_fault(1, Fault::Lie, 0);
    // The third spare is away while the first client audits: its two auditors are 3 and 4.
    fx.set_fault(5, Fault::Freeze, 0);
    let (mut chain, _) = ended_run(&fx).await;
    let case = chain.audit_cases()[1].clone();
    let outcome = chain.audit(&case, case.receipts.len() - 1).await.expect("the audit runs");
    assert_eq!(outcome.verdict, Verdict::Faulty, "{outcome:?}");
    let report = outcome.report.clone().expect("a faulty verdict leaves a report");
    let checked = report.check().expect("the report holds");
    assert_eq!((checked.accused, checked.auditors.len()), (fx.peer(1), QUORUM));
    assert_eq!(FraudReport::decode(&report.encode()).expect("it decodes"), report);
    fx.clear_fault(5);

    // Another client, which never saw the session, recomputes it on the one server of the
    // layers the report does not involve, and convicts the liar.
    let book = Reputation::new();
    let mut other = fx.chain(ChainOptions { reputation: book.clone(), ..opts() });
    let steps_before = fx.steps(5);
    let judgment = other.verify_report(&report).await.expect("the report is verified");
    assert!(judgment.accused_faulty && judgment.lying_auditors.is_empty(), "{judgment:?}");
    assert!(fx.steps(5) > steps_before, "the independent server recomputed it");
    assert!(book.rating(&fx.peer(1)).convicted);
    for i in [0, 2, 3, 4, 5] {
        assert!(!book.rating(&fx.peer(i)).convicted, "server {i}");
    }
    let again = other.verify_report(&report).await.expect_err("a report counts once");
    assert!(matches!(again, ReportRefused::Replayed(_)), "{again}");

    // Forgeries are refused before any recomputation, and change no book.
    let forged = |f: &dyn Fn(&mut FraudReport)| {
        let mut r = report.clone();
        f(&mut r);
        r
    };
    let forgeries = [
        ("an altered receipt", forged(&|r| r.accused.receipts[0].receipt.pos = 1)),
        ("a forged signature", forged(&|r| r.accused.receipts[0].signature[9] ^= 1)),
        ("other inputs", forged(&|r| r.inputs[7] += 0.25)),
        ("other answers", forged(&|r| r.accused.outputs[7] += 0.25)),
        ("one auditor", forged(&|r| drop(r.replays.pop()))),
        ("the accused as its own auditor", forged(&|r| r.replays[1] = r.accused.clone())),
        ("an auditor's altered outputs", forged(&|r| r.replays[0].outputs[3] += 1.0)),
        ("layers past the model", forged(&|r| r.accused.receipts.iter_mut().for_each(|x| x.receipt.end = 4000))),
        ("another row width", forged(&|r| r.hidden = 1)),
        ("inputs no model makes", forged(&|r| r.inputs[0] = 1e30)),
    ];
    for (what, forgery) in forgeries {
        let book = Reputation::new();
        let mut chain = fx.chain(ChainOptions { reputation: book.clone(), ..opts() });
        let steps = fx.steps(5);
        let refused = chain.verify_report(&forgery).await.expect_err(what);
        assert!(matches!(refused, ReportRefused::Report(_)), "{what}: {refused}");
        assert!(book.ratings().is_empty(), "{what}: the book changed");
        assert_eq!(fx.steps(5), steps, "{what}: recomputed a forgery");
    }
    assert!(FraudReport::decode(&report.encode()[..100]).is_err(), "a cut report");

    // Two colluding auditors frame an honest node: their report checks (their signatures
    // are real), but the independent recomputation clears the node and convicts them.
    let fx = Fixture::new(7, &servers);
    fx.set_fault(3, Fault::Lie, 0);
    fx.set_fault(4, Fault::Lie, 0);
    fx.set_fault(5, Fault::Freeze, 0);
    let (mut chain, _) = ended_run(&fx).await;
    let case = chain.audit_cases()[1].clone();
    let framed = chain.audit(&case, case.receipts.len() - 1).await.expect("the audit runs");
    assert_eq!(framed.verdict, Verdict::Faulty, "two liars agree: {framed:?}");
    let report = framed.report.clone().expect("a report");
    report.check().expect("the framing report holds up to recomputation");
    fx.clear_fault(5);
    let book = Reputation::new();
    let mut other = fx.chain(ChainOptions { reputation: book.clone(), ..opts() });
    let judgment = other.verify_report(&report).await.expect("the report is recomputed");
    assert!(!judgment.accused_faulty, "{judgment:?}");
    let mut liars = judgment.lying_auditors.clone();
    liars.sort();
    assert_eq!(liars, {
        let mut l = fx.peers(&[3, 4]);
        l.sort();
        l
    });
    assert!(!book.rating(&fx.peer(1)).convicted);
    assert!(book.rating(&fx.peer(3)).convicted && book.rating(&fx.peer(4)).convicted);
}

/// Test 6a in process, every fault class: a middle server that skips a layer, runs other
/// weights of another quantization or another model of the same shape, adds noise, returns
/// its input, or answers decode steps with an earlier position's state (signing whatever it
/// answers) passes every check a client makes while generating; an audit of its session
/// judges it faulty (two auditors agree), convicts it in the client's book, and every later
/// chain of that book routes around it and is exact; another client that recomputes the
/// fraud report convicts it too.
#[tokio::test]
async fn every_fault_class_is_caught_by_an_audit_and_routed_around() {
    let servers = [(0..2, FAST), (2..4, FAST), (4..6, FAST), (2..4, SPARE), (2..4, SPARE), (2..4, SPARE)];
    for c in FAULT_CLASSES {
        let class = c.name;
        let fx = Fixture::lying(7, &servers, 1, c);
        let reference = outputs(&fx, &mut fx.local_chain()).await.expect("the local chain runs");
        let book = Reputation::new();
        let (mut chain, outs) = ended_run_with(&fx, ChainOptions { reputation: book.clone(), ..opts() }).await;
        assert!(chain.recoveries().is_empty(), "{class}: noticed while generating");
        assert_ne!(outs, reference, "{class}: the fault changed nothing");
        let case = chain.audit_cases()[1].clone();
        assert_eq!(case.hop.peer, fx.peer(1), "{class}");
        let outcome = chain.audit(&case, case.receipts.len() - 1).await.expect("the audit runs");
        assert_eq!(outcome.verdict, Verdict::Faulty, "{class}: {outcome:?}");
        let worst = outcome.opinions.iter().map(|o| o.deviation.worst).fold(f32::INFINITY, f32::min);
        assert!(worst > DELTA_LIMIT, "{class}: {worst:e}");
        eprintln!("{class}: judged faulty by {} auditors, mildest worst token {worst:.2e}", outcome.opinions.len());
        assert!(book.rating(&fx.peer(1)).convicted, "{class}");
        let mut next = fx.chain(ChainOptions { reputation: book.clone(), ..opts() });
        let exact = outputs(&fx, &mut next).await.expect("the next chain runs");
        next.end().await.expect("end");
        assert_ne!(next.audit_cases()[1].hop.peer, fx.peer(1), "{class}: routed through the liar again");
        assert_bits_equal(class, &exact, &reference);
        // Another client recomputes the report on the spare the audit did not ask.
        let report = outcome.report.clone().expect("a report");
        let other_book = Reputation::new();
        let mut other = fx.chain(ChainOptions { reputation: other_book.clone(), ..opts() });
        let judgment = other.verify_report(&report).await.expect("the report is recomputed");
        assert!(judgment.accused_faulty && judgment.lying_auditors.is_empty(), "{class}: {judgment:?}");
        assert!(other_book.rating(&fx.peer(1)).convicted, "{class}");
    }
}

/// An auditor that lies cannot get an honest node judged: its failing opinion calls for two
/// more, drawn from the node's signature, which pass the node and overturn the auditor,
/// which is banned and convicted. With no second opinion to be had, one failure judges nobody.
#[tokio::test]
async fn a_lying_auditor_is_overturned_and_alone_judges_nobody() {
    let fx = Fixture::new(7, &[(0..2, FAST), (2..4, FAST), (4..6, FAST), (2..4, SPARE), (2..4, SPARE), (2..4, SPARE)]);
    fx.set_fault(3, Fault::Lie, 0);
    let book = Reputation::new();
    let (mut chain, _) = ended_run_with(&fx, ChainOptions { reputation: book.clone(), ..opts() }).await;
    let case = chain.audit_cases()[1].clone();
    let outcome = chain.audit(&case, case.receipts.len() - 1).await.expect("the audit runs");
    assert_eq!(outcome.verdict, Verdict::Passed, "{outcome:?}");
    let said: Vec<_> = outcome.opinions.iter().map(|o| (o.auditor, o.passed)).collect();
    assert_eq!(said[0], (fx.peer(3), false), "the fastest spare audits first");
    let mut second: Vec<_> = said[1..].to_vec();
    second.sort();
    let mut want = vec![(fx.peer(4), true), (fx.peer(5), true)];
    want.sort();
    assert_eq!(second, want);
    assert!(chain.is_banned(&fx.peer(3)), "the overturned auditor");
    assert!(!chain.is_banned(&fx.peer(1)), "the audited node");
    assert!(book.rating(&fx.peer(3)).convicted, "the overturned auditor");
    let cleared = book.rating(&fx.peer(1));
    assert!(!cleared.convicted && cleared.games == 2, "a session and a passed audit: {cleared:?}");

    // Only the lying spare left to audit: unconfirmed, and nobody is banned.
    let fx = Fixture::new(7, &WITH_SPARE);
    fx.set_fault(3, Fault::Lie, 0);
    let book = Reputation::new();
    let (mut chain, _) = ended_run_with(&fx, ChainOptions { reputation: book.clone(), ..opts() }).await;
    let case = chain.audit_cases()[1].clone();
    let outcome = chain.audit(&case, case.receipts.len() - 1).await.expect("the audit runs");
    assert_eq!(outcome.verdict, Verdict::Unconfirmed, "{outcome:?}");
    assert!(!chain.is_banned(&fx.peer(1)) && !chain.is_banned(&fx.peer(3)));
    assert!(!book.rating(&fx.peer(1)).convicted && !book.rating(&fx.peer(3)).convicted);
}

/// A server that answers status requests but never a step (issue 11: it held a request for
/// 300 s) loses its span once the default patience ([`ChainOptions::max_wait`], 10 s, over
/// a decode step's 1.2 s timeout times [`ChainOptions::busy_factor`]) has passed.
#[tokio::test]
async fn server_stalling_its_steps_is_given_up_within_the_default_patience() {
    let patience = ChainOptions::default().max_wait;
    let fx = Fixture::new(7, &WITH_SPARE);
    fx.set_fault(1, Fault::Stall, AFTER);
    let mut chain = fx.chain(ChainOptions { max_wait: patience, ..opts() });
    let started = Instant::now();
    let outs = outputs(&fx, &mut chain).await.expect("the spare takes over");
    let took = started.elapsed();
    assert_bits_equal("stall vs local chain", &outs, &outputs(&fx, &mut fx.local_chain()).await.unwrap());
    assert_eq!(chain.route(), hops(&fx, &SPARE_ROUTE));
    assert!(took >= patience, "gave up before the patience: {took:?}");
    assert!(took < patience + Duration::from_secs(3), "stalled for {took:?}, patience {patience:?}");
}

/// Every server that could take a failed span stalls: the step gives up once
/// [`ChainOptions::max_recovery`] has passed, not after a full patience per spare.
#[tokio::test]
async fn recovery_has_a_total_deadline() {
    let stalling =
        [(0..2, FAST), (2..4, FAST), (4..6, FAST), (2..4, SPARE), (2..4, SPARE), (2..4, SPARE), (2..4, SPARE)];
    let fx = Fixture::new(7, &stalling);
    fx.set_fault(1, Fault::Stall, AFTER);
    for spare in 3..7 {
        fx.set_fault(spare, Fault::Stall, 0);
    }
    let o = ChainOptions { max_recovery: Duration::from_millis(1500), ..opts() };
    let mut chain = fx.chain(o.clone());
    let started = Instant::now();
    let err = outputs(&fx, &mut chain).await.expect_err("no server answers [2,4)");
    let took = started.elapsed();
    assert!(matches!(err, ChainError::GaveUp { .. }), "{err}");
    // One patience for the first failure, then the recovery deadline (5 patiences without it).
    assert!(took < o.max_wait + o.max_recovery + Duration::from_secs(1), "took {took:?}: {err}");
}

/// A status answer padded to 1 MiB is refused (read with a 64 KiB limit, not the 16 MiB frame
/// limit): the server is not used.
#[tokio::test]
async fn bloated_status_answer_is_refused() {
    let fx = Fixture::new(7, &[(0..6, FAST), (0..6, SPARE)]);
    fx.set_fault(0, Fault::BloatedStatus, 0);
    let run = swarm_run(&fx).await;
    assert_eq!(run.route, hops(&fx, &[(1, 0..6)]));
    assert_eq!(fx.steps(0), 0, "the bloated server was used");
}

/// A server that claims to be fast but is measured slow loses its span at the next route
/// (issue 11: claims won every route).
#[tokio::test]
async fn measured_speed_beats_a_claimed_one() {
    let fx = Fixture::new(7, &[(0..6, FAST), (0..6, SPARE)]);
    fx.set_fault(0, Fault::Slow(Duration::from_millis(60)), 0);
    let reference = outputs(&fx, &mut fx.local_chain()).await.expect("the local chain runs");
    let mut chain = fx.chain(opts());
    let first = outputs(&fx, &mut chain).await.expect("first run");
    assert_eq!(chain.route(), hops(&fx, &[(0, 0..6)]), "the claim wins before any measurement");
    let second = outputs(&fx, &mut chain).await.expect("second run");
    assert_eq!(chain.route(), hops(&fx, &[(1, 0..6)]), "the measured liar kept its span");
    assert!(chain.recoveries().is_empty());
    assert_bits_equal("first run", &first, &reference);
    assert_bits_equal("second run", &second, &reference);
}

/// A remote server claiming 0 ms per block does not take the blocks of the node's own server
/// (measured by the node itself) from it (issue 11).
#[tokio::test]
async fn no_remote_claim_beats_the_local_server() {
    let fx = Fixture::new(7, &[(0..6, 0.0), (0..6, SPARE)]);
    let mut chain = fx.chain_with_local(opts(), 1);
    let outs = outputs(&fx, &mut chain).await.expect("runs");
    assert_eq!(chain.route(), hops(&fx, &[(1, 0..6)]));
    assert_eq!(fx.steps(0), 0, "the remote liar was used");
    assert_bits_equal("local server", &outs, &outputs(&fx, &mut fx.local_chain()).await.unwrap());
}

/// This node's own server is waited for however long its queue takes, past the patience a
/// remote server gets: a burst of local requests is not a dead server (issue 12: a relay's API
/// banned its own blocks under a burst of prompts).
#[tokio::test]
async fn local_server_is_waited_for() {
    let o = opts();
    let fx = Fixture::new(7, &[(0..6, FAST), (0..6, SPARE)]);
    // The last step (the prefill and 3 decode steps come first) comes after the patience.
    fx.set_fault(0, Fault::Slow(o.max_wait + Duration::from_millis(500)), 1 + DECODE.len() - 1);
    let mut chain = fx.chain_with_local(o, 0);
    let outs = outputs(&fx, &mut chain).await.expect("runs");
    assert_eq!(chain.route(), hops(&fx, &[(0, 0..6)]));
    assert!(chain.recoveries().is_empty(), "the local server was replaced: {:?}", chain.recoveries());
    assert_eq!(fx.steps(1), 0, "the spare was used");
    assert_bits_equal("local server", &outs, &outputs(&fx, &mut fx.local_chain()).await.unwrap());
}

/// A server whose steps come late but which answers status requests is busy, not dead: it
/// keeps its span, and the spare is never used.
#[tokio::test]
async fn slow_but_alive_server_is_kept() {
    let delay = opts().step_timeout * 3;
    let (fx, run) = with_fault(&WITH_SPARE, &FIRST_ROUTE, 1, Fault::Slow(delay), 3).await;
    assert!(run.recoveries.is_empty(), "the slow server was replaced: {:?}", run.recoveries);
    assert_eq!(run.route, hops(&fx, &FIRST_ROUTE));
    assert_eq!(fx.steps(1), 1 + DECODE.len(), "the slow server ran every step");
    assert_eq!(fx.steps(3), 0, "the spare was used");
    // Discovery asked twice (two runs); every slow step asked at least once more.
    assert!(fx.status_requests(1) >= 2 + 2, "no liveness check: {} status requests", fx.status_requests(1));
}

/// `[2,4)` fails; `[2,3)` and `[3,4)` cover its span together.
#[tokio::test]
async fn span_is_rerouted_over_several_servers() {
    let servers = [(0..2, FAST), (2..4, FAST), (4..6, FAST), (2..3, SPARE), (3..4, SPARE)];
    let (fx, run) = with_fault(&servers, &FIRST_ROUTE, 1, Fault::Error, AFTER).await;
    assert_eq!(run.route, hops(&fx, &[(0, 0..2), (3, 2..3), (4, 3..4), (2, 4..6)]));
    let [r] = &run.recoveries[..] else { panic!("one recovery expected: {:?}", run.recoveries) };
    assert_eq!((r.blocks.clone(), r.rerouted.clone()), (2..4, 2..4));
    assert_eq!(r.replacements, fx.peers(&[3, 4]));
}

/// Servers for the re-planning tests: `[0,2) [2,4) [4,6)`, and `[0,3) [3,6)` which cover the
/// model together but stick out of every span of the first route but the first.
const OVERLAPPING: [(Range<usize>, f64); 5] = [(0..2, FAST), (2..4, FAST), (4..6, FAST), (0..3, SPARE), (3..6, SPARE)];

/// `[2,4)` fails in a decode step and no server fits inside `[2,4)`: the route is planned again
/// from layer 0 (`[0,3) [3,6)`) and the whole sequence replayed.
#[tokio::test]
async fn span_that_cannot_be_rerouted_replans_from_layer_0() {
    let (fx, run) = with_fault(&OVERLAPPING, &FIRST_ROUTE, 1, Fault::Error, AFTER).await;
    assert_eq!(run.route, hops(&fx, &[(3, 0..3), (4, 3..6)]));
    let [r] = &run.recoveries[..] else { panic!("one recovery expected: {:?}", run.recoveries) };
    assert_eq!((r.failed, r.blocks.clone(), r.rerouted.clone()), (fx.peer(1), 2..4, 0..6));
    assert_eq!(r.replacements, fx.peers(&[3, 4]));
    assert_eq!(r.replayed_tokens, PROMPT.len() + AFTER - 1);
}

/// The last hop `[4,6)` fails in the very first step, after the hops before it took the
/// prompt: the new route `[0,3) [3,6)` starts from an empty history.
#[tokio::test]
async fn replan_in_the_first_step() {
    let (fx, run) = with_fault(&OVERLAPPING, &FIRST_ROUTE, 2, Fault::Close, 0).await;
    assert_eq!(run.route, hops(&fx, &[(3, 0..3), (4, 3..6)]));
    let [r] = &run.recoveries[..] else { panic!("one recovery expected: {:?}", run.recoveries) };
    assert_eq!((r.failed, r.blocks.clone(), r.rerouted.clone()), (fx.peer(2), 4..6, 0..6));
    assert_eq!(r.replayed_tokens, 0);
}

/// With no server left for a span, the step fails and the sequence is dropped.
#[tokio::test]
async fn no_server_left_ends_the_sequence() {
    let fx = Fixture::new(7, &WITH_SPARE[..3]);
    fx.set_fault(1, Fault::Error, AFTER);
    let mut chain = fx.chain(opts());
    let err = outputs(&fx, &mut chain).await.expect_err("no server can take [2,4)");
    assert!(matches!(err, ChainError::NoRoute { start: 0, end: 6, .. }), "{err}");
    assert!(chain.route().is_empty(), "the broken route was kept");
    let err = chain.forward(&fx.embed(&[1]), 1).await.expect_err("no sequence");
    assert!(matches!(err, ChainError::NotBegun), "{err}");
}

/// The default model's hidden states at every block boundary (the inputs and outputs a hop
/// sees), for a chat prompt and a few greedy decode steps: the largest per-token RMS must stay
/// far below the bound at which a hop's answer is refused as absurd.
#[tokio::test]
async fn default_model_hidden_states_are_far_below_the_rms_bound() {
    use web_node::client::ClientModel;
    use web_node::engine::cpu::CpuBackend;
    use web_node::engine::{BlockExecutor, ExecutorConfig};
    use web_node::model::{ChatMessage, ModelFile};

    let file = ModelFile::open(&ait_tests::default_model()).expect("open the default model");
    let model = ClientModel::from_file(&file, Some(web_node::model::ModelId([0; 32]))).expect("client model");
    let c = model.config.clone();
    let mut layers: Vec<_> = (0..c.n_layers)
        .map(|l| {
            let backend =
                CpuBackend::new(c.clone(), l..l + 1, file.load_layers(l..l + 1).expect("layer")).expect("backend");
            BlockExecutor::new(backend, ExecutorConfig::default())
        })
        .collect();
    let messages =
        [ChatMessage { role: "user".into(), content: "Write a haiku about the sea, then explain it.".into() }];
    let prompt = model.chat_prompt(&messages).expect("prompt");
    let sessions: Vec<_> = layers.iter_mut().map(|e| e.open_session(prompt.len() + 16).expect("session")).collect();
    let rms = |x: &[f32]| -> f32 {
        x.chunks(c.hidden).map(|r| (r.iter().map(|v| v * v).sum::<f32>() / r.len() as f32).sqrt()).fold(0.0, f32::max)
    };
    let mut worst = (0.0f32, 0);
    let (mut tokens, mut n) = (prompt.clone(), prompt.len());
    for _ in 0..16 {
        let mut x = model.head.embed(&tokens).expect("embed");
        for (l, (e, s)) in layers.iter_mut().zip(&sessions).enumerate() {
            let r = rms(&x);
            if r > worst.0 {
                worst = (r, l);
            }
            x = e.step(*s, &x, n).await.expect("step");
        }
        let r = rms(&x);
        if r > worst.0 {
            worst = (r, c.n_layers);
        }
        let logits = model.head.logits(&x[(n - 1) * c.hidden..]).expect("logits");
        tokens = vec![ait_tests::argmax(&logits)];
        n = 1;
    }
    eprintln!("largest per-token RMS of the default model's hidden states: {:.2} (at boundary {})", worst.0, worst.1);
    assert!(f64::from(worst.0) * 10.0 < MAX_HIDDEN_RMS, "the bound leaves too little room: {worst:?}");
}
