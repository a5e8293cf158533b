//! Restoring onto a server that lacks the database's roles (issue 23, the 3 a.m. case): the
//! snapshot records which roles its objects name; a restore that would fail on a missing one
//! says so before it touches the database, naming every one; `--no-owner`, `--no-acl` and
//! `--create-roles` get the restore through.

use crate::common::*;

/// Makes role `name` with `attributes` afresh (one a killed test left is dropped first).
fn new_role(name: &str, attributes: &str) {
    drop_roles(&[name.to_string()]);
    psql("postgres", &format!("CREATE ROLE \"{name}\" {attributes}"));
}

/// Drops `roles` (after the databases that name them are gone).
/// The settings of a database (`ALTER DATABASE … SET`, and a role's in it), `;`-separated.
fn database_settings(name: &str) -> String {
    psql(
        "postgres",
        &format!(
            "SELECT array_to_string(setconfig, ';') FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase \
             WHERE d.datname = '{name}'"
        ),
    )
    .trim()
    .to_string()
}

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
    // And one that owns a database here: a member could act on it.
    let dbowner = format!("cv_dbowner_{pid}");
    drop_roles(&roles);
    drop_roles(&[middle.clone(), power.clone(), dbowner.clone()]);
    psql("postgres", &format!("CREATE ROLE \"{dbowner}\" NOLOGIN"));
    let owned = TestDb::create("roles_owned");
    psql("postgres", &format!("ALTER DATABASE {} OWNER TO \"{dbowner}\"", owned.name));
    psql(
        "postgres",
        &format!(
            "CREATE ROLE \"{owner}\" NOLOGIN; CREATE ROLE \"{group}\" NOLOGIN; CREATE ROLE \"{reader}\" LOGIN CREATEDB; \
             GRANT \"{group}\" TO \"{reader}\"; CREATE ROLE \"{power}\" SUPERUSER NOLOGIN; GRANT \"{power}\" TO \"{owner}\"; \
             CREATE ROLE \"{middle}\" NOLOGIN; GRANT pg_execute_server_program TO \"{middle}\"; \
             GRANT \"{middle}\" TO \"{group}\"; GRANT \"{dbowner}\" TO \"{reader}\""
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
    work.restore_with(&repo, &target, &["--no-owner", "--no-acl", "--trust-snapshot-code"]).ok();
    assert_eq!(target.sql("SELECT count(*), app.total() FROM app.accounts").trim(), "2|2");
    assert_eq!(target.sql("SELECT tableowner FROM pg_tables WHERE schemaname = 'app'").trim(), "postgres");
    assert_eq!(target.sql("SELECT relacl IS NULL FROM pg_class WHERE relname = 'accounts'").trim(), "t");

    // --create-roles: the roles come back without login, with their membership, and the
    // objects with their owners and grants.
    for parallel in [false, true] {
        let created = TestDb::create("roles_created");
        let mut options = vec!["--create-roles", "--json", "--trust-snapshot-code"];
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
             pg_has_role('{owner}', '{power}', 'MEMBER'), pg_has_role('{group}', 'pg_execute_server_program', 'MEMBER'), \
             pg_has_role('{reader}', '{dbowner}', 'MEMBER')"
        );
        assert_eq!(created.sql(&check).trim(), "t|t|f|f|f|f", "no membership in a role with powers is given");
        drop(created);
        drop_roles(&roles);
    }
    drop(target);
    drop(owned);
    drop_roles(&roles);
    drop_roles(&[middle, power, dbowner]);
}

#[test]
fn restore_role_runs_the_snapshots_functions_with_that_roles_rights() {
    let loader = format!("cv_loader_{}", std::process::id());
    drop_roles(std::slice::from_ref(&loader));
    psql("postgres", &format!("CREATE ROLE \"{loader}\" LOGIN"));
    // A check constraint whose function records who runs it (and would act as a superuser).
    let setup = "CREATE TABLE public.seen (who text); \
         CREATE FUNCTION public.noted(v int) RETURNS boolean LANGUAGE plpgsql AS \
           $$ BEGIN INSERT INTO public.seen VALUES (current_user); RETURN true; END $$; \
         CREATE FUNCTION public.\"same\nline\"(a int, b int) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT a = b'; \
         CREATE OPERATOR public.=== (LEFTARG = int, RIGHTARG = int, FUNCTION = public.\"same\nline\"); \
         CREATE FUNCTION public.doubled(v int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT v * 2'; \
         CREATE TABLE public.checked (id int PRIMARY KEY CHECK (public.noted(id)) CHECK (id === id), \
           twice int GENERATED ALWAYS AS (public.doubled(id)) STORED); \
         INSERT INTO public.checked VALUES (1), (2); TRUNCATE public.seen";
    let Ready { source, work, repo, .. } = Scenario::new("roles_role").sql(setup).init("repo").backup();
    let seen = |db: &TestDb| db.sql("SELECT string_agg(DISTINCT who, ',') FROM public.seen").trim().to_string();

    let as_connected = TestDb::create("roles_role_default");
    // As a superuser, refused before anything runs, naming them: give --trust-snapshot-code.
    let run = work.restore_with(&repo, &as_connected, &["latest"]);
    let run =
        run.fails_with(1, "the snapshot's own code could run while this restore loads, with a superuser's rights");
    assert!(run.stderr.contains("public.noted") && run.stderr.contains("public.==="), "{}", run.stderr);
    assert!(as_connected.is_empty());
    let run = work.restore_with(&repo, &as_connected, &["--json", "--trust-snapshot-code", "latest"]).ok();
    assert_eq!(seen(&as_connected), "postgres", "without --role the functions run as the connecting superuser");
    // Said before the rows load, naming the functions (called directly, through an operator,
    // by a generated column; a newline in a name escaped) and the way out.
    let said = format!("{} {}", run.stderr, run.json()["warnings"]);
    for name in ["public.noted(integer)", r#"public."same\nline"(integer,integer)"#, "public.doubled(integer)"] {
        assert!(said.contains(name), "{name}: {said}");
    }
    assert!(said.contains("--role ROLE") && !run.stderr.contains("same\nline"), "{said}");
    let parallel = TestDb::create("roles_role_parallel");
    let run = work.restore_with(&repo, &parallel, &["--parallel", "--trust-snapshot-code", "latest"]).ok();
    assert!(run.stderr.contains("public.noted(integer)"), "{}", run.stderr);
    drop(parallel);

    let as_loader = TestDb::create("roles_role_loader");
    as_loader.sql(&format!("ALTER DATABASE \"{}\" OWNER TO \"{loader}\"", as_loader.name));
    // --role with a superuser's login: the functions could RESET ROLE to it, and are named.
    let run = work.restore_with(&repo, &as_loader, &["--role", &loader, "--no-owner", "--no-acl", "latest"]);
    run.fails_with(1, "the snapshot's own code could run");
    let options = ["--role", &loader, "--no-owner", "--no-acl", "--trust-snapshot-code", "latest"];
    let run = work.restore_with(&repo, &as_loader, &options).ok();
    assert_eq!(seen(&as_loader), loader, "{}", run.stderr);
    assert!(run.stderr.contains("noted") && run.stderr.contains("RESET ROLE"), "{}", run.stderr);
    // Connected as the role itself: nothing to warn of.
    as_loader.sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public");
    as_loader.sql(&format!("ALTER SCHEMA public OWNER TO \"{loader}\""));
    let (key, url) = (work.admin_key(), as_loader.url().replacen("postgres@", &format!("{loader}@"), 1));
    let args = ["restore", "--repo", repo.as_str(), "--identity", &key, "--db", &url, "--role", &loader];
    let run = work.run(&[&args[..], &["--no-owner", "--no-acl", "latest"]].concat()).ok();
    assert_eq!(seen(&as_loader), loader, "{}", run.stderr);
    assert!(!run.stderr.contains("noted"), "a role without superuser rights runs them: {}", run.stderr);
    assert_eq!(as_loader.sql("SELECT count(*) FROM public.checked").trim(), "2");
    let owner = as_loader.sql("SELECT tableowner FROM pg_tables WHERE tablename = 'checked'");
    assert_eq!(owner.trim(), loader);

    // --create with --role: the new database is the role's, as pg_restore --create --role
    // makes it (the role could not load into a database of the connected superuser's).
    // (`--create` loads in parallel: a snapshot holding `seen`'s empty rows could load them after
    // `checked`, over what its check recorded. This one holds `checked`'s only.)
    let url = source.url();
    let args =
        ["backup", "--no-alarm", "--db", url.as_str(), "--repo", repo.as_str(), "--exclude-table", "public.seen"];
    work.run(&args).ok();
    let created = TestDb::create("roles_role_created");
    psql("postgres", &format!("DROP DATABASE {}", created.name));
    let options = ["--create", "--role", &loader, "--no-owner", "--no-acl", "--trust-snapshot-code", "latest"];
    let run = work.restore_with(&repo, &created, &options);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(seen(&created), loader);
    let database_owner =
        psql("postgres", &format!("SELECT datdba::regrole FROM pg_database WHERE datname = '{}'", created.name));
    assert_eq!(database_owner.trim(), loader);
    drop(created);
    drop(as_loader);
    drop(as_connected);
    drop_roles(&[loader]);
}

#[test]
fn restore_create_as_a_role_leaves_out_the_settings_the_server_refuses_it_before_the_load() {
    let loader = format!("cv_setter_{}", std::process::id());
    drop_roles(std::slice::from_ref(&loader));
    psql("postgres", &format!("CREATE ROLE \"{loader}\" NOLOGIN"));
    let Ready { source, work, repo, .. } = Scenario::new("roles_settings")
        .sql("CREATE TABLE public.t (id int PRIMARY KEY); INSERT INTO public.t VALUES (1), (2)")
        .init("repo")
        .backup();
    // log_statement and custom settings (on PostgreSQL 15) only a superuser may set; work_mem
    // anyone. A custom setting may be a secret, as PostgREST's JWT secret is.
    let db = &source.name;
    let secret = format!("cv-jwt-secret-{}", std::process::id());
    psql(
        "postgres",
        &format!(
            "ALTER DATABASE {db} SET log_statement = 'all'; ALTER DATABASE {db} SET work_mem = '8MB'; \
             ALTER DATABASE {db} SET app.jwt_secret = '{secret}'"
        ),
    );
    work.backup(&source, &repo);
    let created = TestDb::create("roles_settings_created");
    psql("postgres", &format!("DROP DATABASE {}", created.name));
    let args = ["--json", "--create", "--role", &loader, "--no-owner", "--no-acl", "latest"];
    let logged_before = server_log_length();
    let run = work.restore_with(&repo, &created, &args);
    assert_eq!(run.code, 0, "a refused setting cost the whole restore: {}", run.stderr);
    // The refusals reached the server's log (it logs failing statements), the secret did not.
    let logged = server_log_since(logged_before);
    assert!(!logged.contains(&secret), "a setting's value reached the server's log: {logged}");
    assert!(logged.contains("RESET \"app.jwt_secret\""), "the refusal was not tried, or not logged: {logged}");
    assert!(!run.stderr.contains(&secret) && !run.stdout.contains(&secret), "{}", run.stderr);
    assert!(run.stderr.contains("left out: the setting app.jwt_secret in the new database"), "{}", run.stderr);
    // A setting only a superuser may set is the snapshot's word: left out before it is tried.
    let said = "left out: the setting log_statement in the new database: only a superuser may set it, and the \
                snapshot chose it (give --trust-snapshot-code";
    assert!(run.stderr.contains(said), "{}", run.stderr);
    assert!(run.json()["warnings"].to_string().contains("log_statement"), "{}", run.stdout);
    assert_eq!(database_settings(&created.name), "work_mem=8MB");
    assert_eq!(created.sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM public.t").trim(), "1,2");
    drop(created);
    drop(source);
    drop_roles(&[loader]);
}

/// The settings of the new database are the snapshot's word: as a superuser, `restore --create`
/// gives none that only a superuser may set (`session_replication_role = replica` would skip
/// every trigger and foreign key there) unless `--trust-snapshot-code`.
#[test]
fn restore_create_as_a_superuser_leaves_out_the_settings_only_a_superuser_may_set() {
    let Ready { source, work, repo, .. } = Scenario::new("roles_su_settings")
        .sql("CREATE TABLE public.t (id int PRIMARY KEY); INSERT INTO public.t VALUES (1)")
        .init("repo")
        .backup();
    let db = &source.name;
    psql(
        "postgres",
        &format!(
            "ALTER DATABASE {db} SET session_replication_role = replica; ALTER DATABASE {db} SET lo_compat_privileges = on; \
             ALTER DATABASE {db} SET work_mem = '8MB'; ALTER DATABASE {db} SET search_path = public, pg_catalog"
        ),
    );
    work.backup(&source, &repo);
    let created = TestDb::unmade("roles_su_settings_created");
    let run = work.restore_with(&repo, &created, &["--json", "--create", "latest"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for name in ["session_replication_role", "lo_compat_privileges"] {
        let said = format!("left out: the setting {name} in the new database: only a superuser may set it");
        assert!(run.stderr.contains(&said), "{}", run.stderr);
    }
    let said = "left out: the setting search_path in the new database: it puts a schema before pg_catalog";
    assert!(run.stderr.contains(said), "{}", run.stderr);
    assert_eq!(database_settings(&created.name), "work_mem=8MB");
    drop(created);
    let trusted = TestDb::unmade("roles_su_settings_trusted");
    let run = work.restore_with(&repo, &trusted, &["--create", "--trust-snapshot-code", "latest"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        database_settings(&trusted.name),
        "session_replication_role=replica;lo_compat_privileges=on;work_mem=8MB;search_path=public, pg_catalog"
    );
    drop(trusted);
    drop(source);
}

/// A role `--create-roles` makes is given its settings in the new database at the finish, after
/// the load: what the server refuses it is found before the load all the same, the role made
/// for the try and undone with it.
#[test]
fn restore_create_tries_the_settings_of_the_roles_it_will_make_before_the_load() {
    let pid = std::process::id();
    let (loader, later) = (format!("cv_maker_{pid}"), format!("cv_later_{pid}"));
    new_role(&loader, "NOLOGIN CREATEROLE");
    new_role(&later, "NOLOGIN");
    let Ready { source, work, repo, .. } = Scenario::new("roles_later")
        .sql("CREATE TABLE public.t (id int PRIMARY KEY); INSERT INTO public.t VALUES (1), (2)")
        .init("repo")
        .backup();
    let db = &source.name;
    psql(
        "postgres",
        &format!(
            "ALTER ROLE \"{later}\" IN DATABASE {db} SET app.level = 'gold'; \
             ALTER ROLE \"{later}\" IN DATABASE {db} SET work_mem = '8MB'"
        ),
    );
    work.backup(&source, &repo);
    drop_roles(std::slice::from_ref(&later));
    let created = TestDb::unmade("roles_later_created");
    let args = ["--json", "--create", "--create-roles", "--role", &loader, "--no-owner", "--no-acl", "latest"];
    let run = work.restore_with(&repo, &created, &args);
    assert_eq!(run.code, 0, "a setting refused to a role made by the restore cost the whole restore: {}", run.stderr);
    let said = format!(
        "left out: the setting app.level of role {later} in the new database: the server refused it to {loader} \
         (permission denied, SQLSTATE 42501)"
    );
    assert!(run.stderr.contains(&said), "{}", run.stderr);
    assert_eq!(run.json()["roles_created"], serde_json::json!([later]), "{}", run.stdout);
    let settings = psql(
        "postgres",
        &format!(
            "SELECT r.rolname || ':' || array_to_string(setconfig, ';') FROM pg_db_role_setting s \
             JOIN pg_database d ON d.oid = s.setdatabase JOIN pg_roles r ON r.oid = s.setrole WHERE d.datname = '{}'",
            created.name
        ),
    );
    assert_eq!(settings.trim(), format!("{later}:work_mem=8MB"));
    assert_eq!(created.sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM public.t").trim(), "1,2");
    drop(created);
    drop(source);
    drop_roles(&[later, loader]);
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

/// What a database itself has, beyond its objects: owner, privileges, settings (the role's
/// own too), connection limit, comment. Names, not oids, so two servers' compare.
fn database_itself(name: &str) -> String {
    psql(
        "postgres",
        &format!(
            "SELECT d.datdba::regrole, d.datconnlimit, shobj_description(d.oid, 'pg_database'), \
               (SELECT string_agg(p, ' ' ORDER BY p COLLATE \"C\") FROM ( \
                  SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END || '=' \
                    || a.privilege_type || CASE WHEN a.is_grantable THEN '*' ELSE '' END AS p \
                  FROM aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a) q), \
               (SELECT string_agg(p, ' ' ORDER BY p COLLATE \"C\") FROM ( \
                  SELECT coalesce(nullif(s.setrole, 0)::regrole::text, 'all') || ':' || array_to_string(s.setconfig, ';') AS p \
                  FROM pg_db_role_setting s WHERE s.setdatabase = d.oid) q) \
             FROM pg_database d WHERE d.datname = '{name}'"
        ),
    )
    .trim()
    .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_create_gives_the_database_its_owner_privileges_settings_and_comment() {
    let pid = std::process::id();
    let (owner, app) = (format!("cv_db_owner_{pid}"), format!("cv db app {pid}"));
    let dba = format!("cv_db_dba_{pid}");
    let roles = [owner.clone(), app.clone()];
    drop_roles(&roles);
    drop_roles(std::slice::from_ref(&dba));
    psql("postgres", &format!("CREATE ROLE \"{owner}\" NOLOGIN; CREATE ROLE \"{app}\" LOGIN; CREATE ROLE {dba} LOGIN"));
    let source = TestDb::create("dbitself");
    // ICU orders its text: the new database must order it alike.
    psql("postgres", &format!("DROP DATABASE {}", source.name));
    psql(
        "postgres",
        &format!("CREATE DATABASE {} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'de-DE'", source.name),
    );
    // The objects belong to the restoring role: only the database itself names the roles.
    source.sql("CREATE SCHEMA app; CREATE SCHEMA \"My Schema\"; CREATE TABLE app.t (id int PRIMARY KEY); INSERT INTO app.t VALUES (1)");
    let db = &source.name;
    psql(
        "postgres",
        &format!(
            "ALTER DATABASE {db} OWNER TO \"{owner}\"; REVOKE ALL ON DATABASE {db} FROM PUBLIC; \
             GRANT CONNECT ON DATABASE {db} TO \"{app}\" WITH GRANT OPTION; \
             ALTER DATABASE {db} SET search_path = app, \"My Schema\", public; \
             ALTER DATABASE {db} SET \"app.jwt_secret\" TO 'top''secret'; \
             ALTER ROLE \"{app}\" IN DATABASE {db} SET statement_timeout = '5s'; \
             ALTER DATABASE {db} CONNECTION LIMIT 50; COMMENT ON DATABASE {db} IS 'the CRM, for real'"
        ),
    );
    let expected = database_itself(db);
    assert!(expected.contains("top'secret") && !expected.contains("PUBLIC"), "{expected}");
    // A setting for a role that is a superuser where the snapshot is restored is left out: a
    // source role with CREATEROLE could have named one after it.
    psql("postgres", &format!("ALTER ROLE postgres IN DATABASE {db} SET search_path = app, pg_catalog"));
    // So is one for a role that can become a superuser here (a member of one).
    psql("postgres", &format!("ALTER ROLE {dba} IN DATABASE {db} SET search_path = app, pg_catalog"));
    psql("postgres", &format!("GRANT postgres TO {dba}"));
    let work = Workspace::new();
    let repo = work.init_repo("repo");
    work.backup(&source, &repo);

    // The backup host's writer key opens the manifest but not the database's settings: one
    // may be a secret (PostgREST keeps its JWT secret there).
    {
        use crmvault::repo::Repository;
        use crmvault::target::{OpenMode, Target};
        let repository = Repository::open(Target::open(&repo, OpenMode::Existing).unwrap()).await.unwrap();
        let writer = repository.unlock_as_writer(&work.config_dir()).await.unwrap();
        let admin = repository.unlock_as_admin(std::path::Path::new(&work.admin_key())).await.unwrap();
        let sealed = repository.read_snapshot(&repository.resolve_snapshot("latest").await.unwrap()).await.unwrap();
        assert_eq!(sealed.open(&writer).unwrap().database_object, None, "the writer reads the database's settings");
        let object = sealed.open(&admin).unwrap().database_object.expect("an admin reads them");
        assert!(object.settings.iter().any(|s| s.value == "top'secret"), "{object:?}");
    }

    let restored = TestDb::create("dbitself_restored");
    psql("postgres", &format!("DROP DATABASE {}", restored.name));
    let create = |extra: &[&str]| {
        let mut options = vec!["--create", "latest"];
        options.splice(0..0, extra.iter().copied());
        work.restore_with(&repo, &restored, &options)
    };
    let run = create(&[]).ok();
    assert!(run.stderr.contains("left out: the setting search_path of role postgres"), "{}", run.stderr);
    assert!(run.stderr.contains(&format!("left out: the setting search_path of role {dba}")), "{}", run.stderr);
    assert_eq!(database_itself(&restored.name), expected.replace(db.as_str(), &restored.name));
    let locale = |name: &str| {
        psql("postgres", &format!("SELECT datlocprovider, daticulocale FROM pg_database WHERE datname = '{name}'"))
    };
    assert_eq!(locale(&restored.name).trim(), "i|de-DE");
    // A list setting came back as a list: the sessions find the table through it.
    let url = restored.url();
    let found = std::process::Command::new(pg_program("psql"))
        .args(["-X", "-A", "-t", "-d", &url, "-c", "SHOW search_path", "-c", "SELECT count(*) FROM t"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&found.stdout), "app, \"My Schema\", public\n1\n");
    psql("postgres", &format!("DROP DATABASE {}", restored.name));

    // --no-owner: the restoring role's database; the source owner, now just another role, is
    // granted nothing, the others what they had.
    create(&["--no-owner"]).ok();
    let no_owner = database_itself(&restored.name);
    assert!(
        no_owner.starts_with(&format!("postgres|50|the CRM, for real|\"{app}\"=CONNECT* postgres=CONNECT")),
        "{no_owner}"
    );
    assert!(!no_owner.contains(&format!("{owner}=")) && !no_owner.contains("PUBLIC"), "{no_owner}");
    psql("postgres", &format!("DROP DATABASE {}", restored.name));

    // --no-owner --no-acl: the restoring role's database, a new database's privileges; the
    // settings and the comment still come.
    create(&["--no-owner", "--no-acl"]).ok();
    let bare = database_itself(&restored.name);
    assert!(bare.starts_with("postgres|50|the CRM, for real|PUBLIC=CONNECT PUBLIC=TEMPORARY"), "{bare}");
    assert!(bare.contains("search_path=app, \"My Schema\", public"), "{bare}");
    psql("postgres", &format!("DROP DATABASE {}", restored.name));

    // On a server without the roles: refused first, naming them; a restore into an existing
    // database does not need them (it leaves the database itself alone).
    drop(source);
    drop_roles(&roles);
    let run = create(&[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains(&format!("{owner} (the database's owner")), "{}", run.stderr);
    assert!(run.stderr.contains(&app), "{}", run.stderr);
    let existing = TestDb::create("dbitself_existing");
    work.restore(&repo, &existing).ok();
    create(&["--create-roles"]).ok();
    assert_eq!(
        psql("postgres", &format!("SELECT datdba::regrole FROM pg_database WHERE datname = '{}'", restored.name))
            .trim(),
        owner
    );
    drop(existing);
    drop(restored);
    drop_roles(&roles);
    drop_roles(&[dba]);
}

#[test]
fn a_database_owners_search_path_does_not_reach_crmvaults_own_queries() {
    let Ready { work, repo, .. } = Scenario::new("search_path")
        .sql("CREATE TABLE public.t (id int); INSERT INTO public.t VALUES (1)")
        .init("repo")
        .backup();
    // The target's owner shadows a catalog with a view that runs its function, and puts its
    // schema first for every session of the database (a superuser admin's included).
    let target = TestDb::create("search_path_target");
    target.sql(
        "CREATE SCHEMA evil; CREATE TABLE evil.seen (who text); \
         CREATE FUNCTION evil.note() RETURNS boolean LANGUAGE plpgsql AS \
           $$ BEGIN INSERT INTO evil.seen VALUES (current_user); RETURN true; END $$; \
         CREATE VIEW evil.pg_namespace AS SELECT n.* FROM pg_catalog.pg_namespace n WHERE evil.note(); \
         CREATE VIEW evil.pg_roles AS SELECT r.* FROM pg_catalog.pg_roles r WHERE evil.note()",
    );
    psql("postgres", &format!("ALTER DATABASE {} SET search_path = evil, pg_catalog", target.name));
    work.restore(&repo, &target).fails_with(1, "not empty");
    work.run(&["drill", "--repo", &repo, "--identity", &work.admin_key(), "--scratch-db", &target.url()]);
    assert_eq!(target.sql("SELECT count(*) FROM evil.seen").trim(), "0", "crmvault ran the owner's function");
}

#[test]
fn a_member_of_a_superuser_role_is_warned_as_a_superuser_is() {
    let member = format!("cv_member_{}", std::process::id());
    drop_roles(std::slice::from_ref(&member));
    psql("postgres", &format!("CREATE ROLE \"{member}\" NOLOGIN; GRANT postgres TO \"{member}\""));
    let Ready { source, work, repo, .. } = Scenario::new("roles_member")
        .sql("CREATE TABLE public.t (id int PRIMARY KEY); INSERT INTO public.t VALUES (1)")
        .init("repo")
        .backup();
    // Beside live data, as a role that can become the superuser: its rights are the superuser's.
    let args =
        ["--role", &member, "--table", "public.t", "--schema-map", "public=side", "--no-owner", "--no-acl", "latest"];
    let run = work.restore_with(&repo, &source, &args).ok();
    assert!(run.stderr.contains("restoring beside live data as a superuser"), "{}", run.stderr);
    assert_eq!(source.sql("SELECT count(*) FROM side.t").trim(), "1");
    drop(source);
    drop_roles(&[member]);
}

/// A role that owned objects without being a superuser in the source, and is one where the
/// snapshot is restored (a source role named like that server's superuser): its SECURITY
/// DEFINER functions would act as a superuser for whoever calls them. The restore refuses
/// before it changes anything, and `--no-owner` gets it through.
#[test]
fn an_owner_that_is_a_superuser_only_here_is_refused_before_the_restore() {
    let rising = format!("cv_rising_{}", std::process::id());
    new_role(&rising, "NOLOGIN");
    let setup = format!(
        "CREATE TABLE public.t (id int PRIMARY KEY); INSERT INTO public.t VALUES (1); \
         CREATE FUNCTION public.helper() RETURNS text LANGUAGE sql SECURITY DEFINER AS 'SELECT current_user'; \
         ALTER FUNCTION public.helper() OWNER TO {rising}"
    );
    let Ready { source, work, repo, .. } = Scenario::new("roles_rising").sql(&setup).init("repo").backup();
    psql("postgres", &format!("ALTER ROLE {rising} SUPERUSER"));
    let target = TestDb::create("roles_rising_target");
    work.restore(&repo, &target).fails_with(
        1,
        &format!("{rising} owns objects of the snapshot and is a superuser on this server, though not in the source"),
    );
    assert_eq!(target.sql("SELECT count(*) FROM pg_class WHERE relname = 't'").trim(), "0", "nothing was restored");
    work.restore_with(&repo, &target, &["--no-owner", "--trust-snapshot-code", "latest"]).ok();
    assert_eq!(target.sql("SELECT public.helper()").trim(), "postgres");
    drop(target);
    drop(source);
    drop_roles(&[rising]);
}

/// Before PostgreSQL 16 a role with CREATEROLE may grant itself any role but a superuser
/// (pg_execute_server_program runs programs as the server): a loader with it is warned of the
/// snapshot's functions as a superuser is.
#[test]
fn a_loader_with_createrole_is_warned_as_a_superuser_is_before_postgresql_16() {
    let creator = format!("cv_creator_{}", std::process::id());
    new_role(&creator, "LOGIN CREATEROLE");
    let setup = "CREATE FUNCTION public.positive(v int) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT v > 0'; \
                 CREATE TABLE public.checked (id int PRIMARY KEY CHECK (public.positive(id))); \
                 INSERT INTO public.checked VALUES (1), (2)";
    let Ready { source, work, repo, .. } = Scenario::new("roles_creator").sql(setup).init("repo").backup();
    let target = TestDb::create("roles_creator_target");
    target.sql(&format!("ALTER DATABASE \"{}\" OWNER TO {creator}", target.name));
    target.sql(&format!("DROP SCHEMA public CASCADE; CREATE SCHEMA public AUTHORIZATION {creator}"));
    let (key, url) = (work.admin_key(), target.url().replacen("postgres@", &format!("{creator}@"), 1));
    let args = ["restore", "--repo", repo.as_str(), "--identity", &key, "--db", &url, "--role", &creator];
    let version: u32 = psql("postgres", "SHOW server_version_num").trim().parse().expect("a version");
    // Before PostgreSQL 16, refused as a superuser's restore is, unless the code is trusted.
    let run = work.run(&[&args[..], &["--no-owner", "--no-acl", "latest"]].concat());
    assert_eq!(run.code == 1 && run.stderr.contains("public.positive"), version < 160_000, "{}", run.stderr);
    assert!(version >= 160_000 || target.is_empty());
    let run = work.run(&[&args[..], &["--no-owner", "--no-acl", "--trust-snapshot-code", "latest"]].concat());
    let run = if version < 160_000 { run.ok() } else { run };
    assert_eq!(target.sql("SELECT count(*) FROM public.checked").trim(), "2");
    let warned = run.stderr.contains("public.positive(integer)") && run.stderr.contains("CREATEROLE");
    assert_eq!(warned, version < 160_000, "{}", run.stderr);
    drop(target);
    drop(source);
    drop_roles(&[creator]);
}

/// A custom setting under a prefix an extension reserves where the snapshot is restored
/// (`plpgsql.x`, once plpgsql is loaded) is refused by name: left out with a warning, not the
/// end of the restore.
#[test]
fn restore_create_leaves_out_a_setting_whose_name_the_server_reserves() {
    let Ready { source, work, repo, .. } = Scenario::new("roles_reserved")
        .sql("CREATE TABLE public.t (id int PRIMARY KEY); INSERT INTO public.t VALUES (1)")
        .init("repo")
        .backup();
    psql("postgres", &format!("ALTER DATABASE {} SET plpgsql.cv_note = 'kept out'", source.name));
    work.backup(&source, &repo);
    let created = TestDb::unmade("roles_reserved_created");
    // Every session of the restore loads plpgsql first, which reserves its prefix.
    let url = format!("{}?options=-csession_preload_libraries%3Dplpgsql", created.url());
    let key = work.admin_key();
    let run = work.run(&["restore", "--repo", &repo, "--identity", &key, "--db", &url, "--create", "latest"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("left out: the setting plpgsql.cv_note"), "{}", run.stderr);
    assert_eq!(created.sql("SELECT count(*) FROM public.t").trim(), "1");
}
