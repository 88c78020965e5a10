//! Paired experiments: one seed gives a DMUE run and a baseline run the same trunk and target
//! weights. In a test binary of its own: `tch::manual_seed` seeds a process-wide generator, and
//! any test running in parallel would draw from it between the seed and the construction.

use dmue_train::model::{ModelConfig, MultiBranchNet};
use tch::{nn, Device};

#[test]
fn one_seed_gives_every_mode_the_same_deployed_weights() {
    let cfg = ModelConfig {
        width: Some(4),
        ..Default::default()
    };
    let build = |multi: bool| {
        tch::manual_seed(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let _ = MultiBranchNet::new(&vs.root(), &cfg, 5, multi);
        vs
    };
    let (dmue, base) = (build(true), build(false));
    let (d, b) = (dmue.variables(), base.variables());
    assert!(b.len() > 10);
    for (name, t) in &b {
        let other = d.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert!(t.equal(other), "{name} differs between DMUE and baseline");
    }
}
