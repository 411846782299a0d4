//! Reads the real data sets from ../shared/evaldata: every loader, the pinned checksums, and
//! the frozen id lists against the selection rule. Fails clearly when the folder is absent.
//!
//! To refreeze the lists after a deliberate change of the rule:
//! `BAKEOFF_WRITE_IDS=1 cargo test -p bakeoff-eval --test data` (writes profiles/*.json).

use std::path::PathBuf;

use bakeoff_eval::data::{self, DataDir};
use bakeoff_eval::select::Profile;
use bakeoff_eval::suite::Plan;

fn data_dir() -> PathBuf {
    let p = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/evaldata"
    ));
    assert!(
        p.join("SHA256SUMS").is_file(),
        "the evaluation data is missing: expected ../shared/evaldata beside the repository ({})",
        p.display()
    );
    p
}

#[test]
fn every_loader_reads_its_upstream_format() {
    let mut d = DataDir::open(data_dir()).expect("data dir");
    let mmlu = data::load_mmlu(&mut d).expect("mmlu");
    assert_eq!(mmlu.len(), 14_042);
    assert_eq!(
        mmlu.iter()
            .map(|m| m.group.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        57
    );
    let arc = data::load_arc(&mut d, "Challenge").expect("arc");
    assert_eq!(arc.len(), 1_172);
    assert!(
        arc.iter().any(|a| a.labels[0] == "1"),
        "numeric labels are handled"
    );
    assert!(arc.iter().all(|a| a.gold < a.choices.len()));
    let hs = data::load_hellaswag(&mut d).expect("hellaswag");
    assert_eq!(hs.len(), 10_042);
    assert!(hs[0].question.starts_with("Roof shingle removal:") && hs[0].gold == 3);
    let tq = data::load_truthfulqa(&mut d).expect("truthfulqa");
    assert_eq!(tq.len(), 817);
    assert!(
        tq.iter()
            .all(|t| t.gold == 0 && (2..=4).contains(&t.choices.len()))
    );
    let g = data::load_gsm8k(&mut d).expect("gsm8k");
    assert_eq!(g.len(), 1_319);
    assert_eq!(g[0].answer, "18");
    let ife = data::load_ifeval(&mut d).expect("ifeval");
    assert_eq!(ife.len(), 541);
    for it in &ife {
        for id in &it.instruction_id_list {
            assert!(
                bakeoff_eval::ifeval::INSTRUCTIONS.contains(&id.as_str()),
                "{id}"
            );
        }
    }
    let he = data::load_humaneval(&mut d).expect("humaneval");
    assert_eq!(he.len(), 164);
    let mb = data::load_mbpp(&mut d).expect("mbpp");
    assert_eq!(mb.len(), 500);
    let mt = data::load_mt_bench(&mut d).expect("mt_bench");
    assert_eq!(mt.len(), 80);
    assert_eq!(
        data::load_judge_prompts(&mut d)
            .expect("judge prompts")
            .len(),
        8
    );
    assert_eq!(
        data::load_mt_bench_references(&mut d).expect("refs").len(),
        30
    );
    let wt = data::load_wikitext(&mut d).expect("wikitext");
    assert_eq!(wt.len(), 1_290_590);
    // Every file read is hashed and matches its pinned checksum.
    assert!(d.files.len() > 60);
    for f in &d.files {
        assert_eq!(f.known_match, Some(true), "{} {}", f.path, f.sha256);
    }
}

#[test]
fn frozen_id_lists_follow_the_rule() {
    for profile in [Profile::Quick, Profile::Standard] {
        let plan = Plan::load(&data_dir(), profile).expect("plan");
        if std::env::var_os("BAKEOFF_WRITE_IDS").is_some() {
            let path = format!(
                "{}/profiles/{}.json",
                env!("CARGO_MANIFEST_DIR"),
                profile.as_str()
            );
            let text = serde_json::to_string_pretty(&plan.derived_ids).expect("json");
            std::fs::write(&path, text + "\n").expect("write ids");
            continue;
        }
        assert!(
            plan.ids_match_rule,
            "{profile:?}: profiles/*.json differ from the rule (see this file's header)"
        );
        let c = plan.counts();
        match profile {
            Profile::Quick => {
                assert_eq!(
                    (
                        c["mmlu"],
                        c["arc_challenge"],
                        c["hellaswag"],
                        c["truthfulqa_mc"]
                    ),
                    (57, 30, 30, 40)
                );
                assert_eq!(
                    (c["gsm8k"], c["ifeval"], c["humaneval"], c["mt_bench"]),
                    (5, 8, 6, 3)
                );
                assert_eq!(plan.humaneval[0].task_id, "HumanEval/139");
                assert_eq!(plan.gsm8k[0].id, "gsm8k:41");
            }
            _ => assert_eq!((c["mmlu"], c["mbpp"], c["humaneval"]), (570, 40, 40)),
        }
    }
}
