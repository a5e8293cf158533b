//! Restoring onto a server that lacks the database's roles (issue 23, the 3 a.m. case): the
//! snapshot records which roles its objects name; a restore that would fail on a missing one
//! says so before it touches the database, naming every one; `--no-owner`, `--no-acl` and
//! `--create-roles` get the restore through.

use crate::common::*;

/// Drops `roles` (after the databases that name them are gone).
fn drop_roles(roles: &[String]) {
    for role in roles {
        psql("postgres", &format!("DROP ROLE IF EXISTS \"{role}\""));
    }
}

#[test]
fn a_restore_names_every_missing_role_first_and_each_option_gets_it_through() {
    let pid = std::process::id();
    let (owner, reader, group) = (format!("cv owner {pid}"), format!("cv_reader_{pid}"), format!("cv_group_{pid}"));
    let roles = [owner.clone(), reader.clone(), group.clone()];
    // A superuser role that stays on the server: a restore must not make anyone its member.
    let power = format!("cv_power_{pid}");
    // A plain role that stays too, itself a member of one with powers.
    let middle = format!("cv_middle_{pid}");
    drop_roles(&roles);
    drop_roles(&[middle.clone(), power.clone()]);
    psql(
        "postgres",
        &format!(
            "CREATE ROLE \"{owner}\" NOLOGIN; CREATE ROLE \"{group}\" NOLOGIN; CREATE ROLE \"{reader}\" LOGIN CREATEDB; \
             GRANT \"{group}\" TO \"{reader}\"; CREATE ROLE \"{power}\" SUPERUSER NOLOGIN; GRANT \"{power}\" TO \"{owner}\"; \
             CREATE ROLE \"{middle}\" NOLOGIN; GRANT pg_execute_server_program TO \"{middle}\"; \
             GRANT \"{middle}\" TO \"{group}\""
        ),
    );
    let source = TestDb::create("roles");
    source.sql(&format!(
        "CREATE SCHEMA app AUTHORIZATION \"{owner}\"; \
         CREATE TABLE app.accounts (id int PRIMARY KEY, name text); INSERT INTO app.accounts VALUES (1, 'a'), (2, 'b'); \
         ALTER TABLE app.accounts OWNER TO \"{owner}\"; \
         CREATE FUNCTION app.total() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM app.accounts'; \
         ALTER FUNCTION app.total() OWNER TO \"{group}\"; \
         GRANT USAGE ON SCHEMA app TO \"{group}\"; GRANT SELECT ON app.accounts TO \"{reader}\";"
    ));
    let work = Workspace::new();
    let repo = work.init_repo("repo");
    work.backup(&source, &repo);
    // The roles are gone on the server restored onto (here: dropped with the source).
    drop(source);
    drop_roles(&roles);

    // Refused before anything is changed, every missing role named with why it is needed.
    let target = TestDb::create("roles_target");
    let run = work.restore(&repo, &target);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("lacks") && run.stderr.contains("--create-roles"), "{}", run.stderr);
    assert!(run.stderr.contains(&format!("{owner} (owns objects)")), "{}", run.stderr);
    assert!(run.stderr.contains(&format!("{group} (owns objects, granted privileges)")), "{}", run.stderr);
    assert!(run.stderr.contains(&format!("{reader} (granted privileges)")), "{}", run.stderr);
    assert!(target.is_empty());
    // --no-owner alone still needs the roles granted privileges; --parallel says the same.
    let run = work.restore_with(&repo, &target, &["--no-owner", "--parallel"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(!run.stderr.contains(&format!("{owner} (")) && run.stderr.contains(&reader), "{}", run.stderr);
    assert!(target.is_empty());

    // --no-owner --no-acl: everything belongs to the restoring role, nothing is granted.
    work.restore_with(&repo, &target, &["--no-owner", "--no-acl"]).ok();
    assert_eq!(target.sql("SELECT count(*), app.total() FROM app.accounts").trim(), "2|2");
    assert_eq!(target.sql("SELECT tableowner FROM pg_tables WHERE schemaname = 'app'").trim(), "postgres");
    assert_eq!(target.sql("SELECT relacl IS NULL FROM pg_class WHERE relname = 'accounts'").trim(), "t");

    // --create-roles: the roles come back without login, with their membership, and the
    // objects with their owners and grants.
    for parallel in [false, true] {
        let created = TestDb::create("roles_created");
        let mut options = vec!["--create-roles", "--json"];
        if parallel {
            options.push("--parallel");
        }
        let run = work.restore_with(&repo, &created, &options).ok();
        let mut reported: Vec<String> =
            run.json()["roles_created"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
        reported.sort();
        let mut expected = roles.to_vec();
        expected.sort();
        assert_eq!(reported, expected);
        assert_eq!(
            created.sql("SELECT tableowner FROM pg_tables WHERE schemaname = 'app'").trim(),
            owner,
            "the table's owner"
        );
        let check = format!(
            "SELECT has_table_privilege('{reader}', 'app.accounts', 'SELECT'), pg_has_role('{reader}', '{group}', 'MEMBER'), \
             (SELECT bool_or(rolcanlogin) FROM pg_roles WHERE rolname IN ('{owner}', '{reader}', '{group}')), \
             pg_has_role('{owner}', '{power}', 'MEMBER'), pg_has_role('{group}', 'pg_execute_server_program', 'MEMBER')"
        );
        assert_eq!(created.sql(&check).trim(), "t|t|f|f|f", "no membership in a role with powers is given");
        drop(created);
        drop_roles(&roles);
    }
    drop(target);
    drop_roles(&roles);
    drop_roles(&[middle, power]);
}

#[test]
fn restore_role_runs_the_snapshots_functions_with_that_roles_rights() {
    let loader = format!("cv_loader_{}", std::process::id());
    drop_roles(std::slice::from_ref(&loader));
    psql("postgres", &format!("CREATE ROLE \"{loader}\" NOLOGIN"));
    // A check constraint whose function records who runs it (and would act as a superuser).
    let setup = "CREATE TABLE public.seen (who text); \
         CREATE FUNCTION public.noted(v int) RETURNS boolean LANGUAGE plpgsql AS \
           $$ BEGIN INSERT INTO public.seen VALUES (current_user); RETURN true; END $$; \
         CREATE TABLE public.checked (id int PRIMARY KEY CHECK (public.noted(id))); \
         INSERT INTO public.checked VALUES (1), (2); TRUNCATE public.seen";
    let Ready { work, repo, .. } = Scenario::new("roles_role").sql(setup).init("repo").backup();
    let seen = |db: &TestDb| db.sql("SELECT string_agg(DISTINCT who, ',') FROM public.seen").trim().to_string();

    let as_connected = TestDb::create("roles_role_default");
    work.restore(&repo, &as_connected).ok();
    assert_eq!(seen(&as_connected), "postgres", "without --role the functions run as the connecting superuser");

    let as_loader = TestDb::create("roles_role_loader");
    as_loader.sql(&format!("ALTER DATABASE \"{}\" OWNER TO \"{loader}\"", as_loader.name));
    let run = work.restore_with(&repo, &as_loader, &["--role", &loader, "--no-owner", "--no-acl", "latest"]).ok();
    assert_eq!(seen(&as_loader), loader, "{}", run.stderr);
    assert_eq!(as_loader.sql("SELECT count(*) FROM public.checked").trim(), "2");
    let owner = as_loader.sql("SELECT tableowner FROM pg_tables WHERE tablename = 'checked'");
    assert_eq!(owner.trim(), loader);
    drop(as_loader);
    drop(as_connected);
    drop_roles(&[loader]);
}

#[test]
fn two_restores_creating_the_same_roles_at_once_both_succeed() {
    let pid = std::process::id();
    let (owner, reader) = (format!("cv_both_owner_{pid}"), format!("cv_both_reader_{pid}"));
    let roles = [owner.clone(), reader.clone()];
    drop_roles(&roles);
    psql("postgres", &format!("CREATE ROLE \"{owner}\" NOLOGIN; CREATE ROLE \"{reader}\" NOLOGIN"));
    let setup =
        format!("ALTER TABLE public.filler OWNER TO \"{owner}\"; GRANT SELECT ON public.filler TO \"{reader}\"");
    let Ready { work, repo, .. } = Scenario::new("roles_both").filler().sql(&setup).init("repo").backup();
    drop_roles(&roles);
    let (first, second) = (TestDb::create("roles_both_a"), TestDb::create("roles_both_b"));
    // Both find the roles missing before either has made them (the load takes a while).
    let runs: Vec<serde_json::Value> = std::thread::scope(|scope| {
        let a = scope.spawn(|| work.restore_with(&repo, &first, &["--json", "--create-roles", "latest"]).ok().json());
        let b = scope.spawn(|| work.restore_with(&repo, &second, &["--json", "--create-roles", "latest"]).ok().json());
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    let mut created: Vec<String> = runs
        .iter()
        .flat_map(|run| run["roles_created"].as_array().cloned().unwrap_or_default())
        .map(|role| role.as_str().unwrap().to_string())
        .collect();
    created.sort();
    let mut expected = roles.to_vec();
    expected.sort();
    assert_eq!(created, expected, "each role made once, by one of them: {runs:?}");
    for db in [&first, &second] {
        assert_eq!(db.sql("SELECT count(*) FROM public.filler").trim(), "300000");
    }
    drop(first);
    drop(second);
    drop_roles(&roles);
}
