//! What the listings and reports say: every figure means what its column says, and `verify`
//! groups what it finds.

use std::path::Path;

use crate::common::{Scenario, TestDb, Workspace, files_under};

fn listed(work: &Workspace, repo: &str, filter: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["snapshots", "--json", "--repo", repo];
    args.extend_from_slice(filter);
    work.run(&args).ok().json()["snapshots"].as_array().unwrap().clone()
}

#[test]
fn backup_and_snapshots_agree_on_every_figure() {
    let ready = Scenario::new("figures").crm().init("repo").backup();
    let (work, repo) = (&ready.work, ready.repo.clone());
    let first = ready.report.clone();
    // Nothing changed: the second backup adds nothing but its snapshot object.
    let second = work.backup(&ready.source, &repo);
    let empty = TestDb::create("figures_empty");
    let third = work.backup(&empty, &repo);

    let list = listed(work, &repo, &[]);
    assert_eq!(list.len(), 3, "{list:?}");
    for (report, snapshot) in [&first, &second, &third].into_iter().zip(&list) {
        assert_eq!(snapshot["id"], report["snapshot_id"]);
        assert_eq!(snapshot["bytes_added"], report["bytes_added"], "{report}\n{snapshot}");
        assert_eq!(snapshot["bytes_added"], report["targets"][0]["bytes_added"], "{report}");
        assert_eq!(snapshot["size"], report["bytes_read"], "{report}\n{snapshot}");
    }
    let added = |value: &serde_json::Value| value["bytes_added"].as_u64().unwrap();
    let object_size = |id: &serde_json::Value| {
        std::fs::metadata(Path::new(&repo).join("snapshots").join(id.as_str().unwrap())).unwrap().len()
    };
    assert_eq!(added(&second), object_size(&second["snapshot_id"]), "{second}");
    assert!(added(&first) > added(&second), "{first}");
    // A database without tables restores only its (small) schema.
    let empty_size = list[2]["size"].as_u64().unwrap();
    assert!(empty_size > 0 && empty_size < 4096, "{}", list[2]);
    assert_eq!(list[2]["contents"]["tables"], serde_json::json!([]));

    // verify counts every object it checked, snapshots included: every file of the repository.
    let verify = work.run(&["verify", "--json", "--repo", &repo]).ok().json();
    assert_eq!(verify["snapshots"], 3);
    let files = files_under(Path::new(&repo));
    assert_eq!(verify["objects"].as_u64().unwrap(), files.len() as u64, "{verify}\n{files:?}");
    let bytes: u64 = files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
    assert_eq!(verify["bytes"].as_u64().unwrap(), bytes, "{verify}");

    // The text says it the same way, singular where it is one.
    let text = work.run(&["snapshots", "--repo", &repo]).ok().stdout;
    assert!(text.lines().next().unwrap().contains("SIZE") && text.contains(&empty.name), "{text}");
    let verify = work.run(&["verify", "--repo", &repo]).ok().stdout;
    assert!(verify.contains("checked 3 snapshots,") && verify.ends_with(": no problems\n"), "{verify}");
}

#[test]
fn verify_reports_a_deleted_index_once_with_its_chunks_and_a_summary() {
    let ready = Scenario::new("lost_index").crm().init("repo").backup();
    let chunks = ready.report["chunks"].as_u64().unwrap();
    assert!(chunks > 20, "{}", ready.report);
    let indexes = files_under(&Path::new(&ready.repo).join("index"));
    let victim = &indexes[0];
    std::fs::remove_file(victim).unwrap();
    let index_name = victim.file_name().unwrap().to_str().unwrap();

    let verify = ready.work.run(&["verify", "--repo", &ready.repo]);
    assert_eq!(verify.code, 3, "{}{}", verify.stdout, verify.stderr);
    let problems: Vec<&str> = verify.stdout.lines().filter(|l| l.starts_with("problem:")).collect();
    assert_eq!(problems.len(), indexes.len().min(1), "{}", verify.stdout);
    let line = problems[0];
    assert!(line.contains(index_name) && line.contains("missing"), "{line}");
    assert!(line.contains("chunks unreadable") && line.contains("snapshot "), "{line}");
    let summary = verify.stdout.lines().last().unwrap();
    assert!(summary.starts_with("checked 1 snapshot,") && summary.ends_with(": 1 problem"), "{summary}");

    // The same with an admin identity, which also reads the lists the index located.
    let key = ready.work.admin_key();
    for extra in [&[][..], &["--identity", key.as_str()][..]] {
        let mut args = vec!["verify", "--json", "--repo", &ready.repo];
        args.extend_from_slice(extra);
        let report = ready.work.run(&args).json();
        let problems = report["problems"].as_array().unwrap();
        assert_eq!(problems.len(), 1, "{report}");
        assert!(problems[0]["chunks"].as_u64().unwrap() > 1, "{report}");
    }
}
