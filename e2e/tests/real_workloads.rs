//! The company's workloads on the real engine, not stand-ins we chose: the gateway is a CodeIgniter-3-shaped
//! repo (a front controller reading `application/config/production/config.php`, with an empty `base_url`,
//! several `_url` keys and one commented out) served by Apache with mod_php at erangel's production path with
//! the gateway role's default settings; two Go services with a third-party module, one vendored and one from a
//! module cache the test fills and hands to the agent through `goEnv` (no network), its main package in
//! `./cmd/payment`; an Environment with a file. The sandbox routes one service to itself, one to OCP and one to
//! an explicit URL. Everything is asserted through the gateway's published port.
//!
//! Then: a route change reaches the next request through Apache's graceful reload (same container, same start,
//! same PID 1); a push to a service branch is seen at once through Bitbucket's push webhook (the agent's own
//! periodic fetch is an hour here), and its deployment records the commit that last changed the sandbox's file,
//! not the config repo's HEAD.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sdp_e2e::*;

const APP_YAML: &str = "feature: on\nowner: qa\n";

fn manifest(name: &str, account_route: &str, ports: (u16, u16, u16), host: &str) -> String {
    let (gateway, account, payment) = ports;
    format!(
        "apiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  gateway:\n    branch: develop\n    \
         port: {gateway}\n    env:\n      GATEWAY_MODE: sandbox\n  services:\n    account:\n      branch: main\n      \
         port: {account}\n      environments: [account-files]\n    payment:\n      branch: main\n      \
         port: {payment}\n      build:\n        package: ./cmd/payment\n        ldflags: -s -w\n  routes:\n    \
         account: {account_route}\n    payment: http://{host}:{payment}\n    user: ocp\n"
    )
}

const ENVIRONMENT: &str = "apiVersion: sdp/v1\nkind: Environment\nmetadata:\n  name: account-files\nspec:\n  \
                           variables:\n    GREETING: hello\n  files:\n    conf/app.yaml: |\n      feature: on\n      \
                           owner: qa\n";

fn inspect(container: &str, format: &str) -> String {
    run(Command::new("docker").args(["inspect", "-f", format, container]))
}

fn through(port: u16, path: &str) -> Result<String, String> {
    get_text(&format!("http://127.0.0.1:{port}{path}"))
}

fn set_yaml(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "{from} in {text}");
    std::fs::write(file, text.replace(from, to)).unwrap();
}

#[test]
fn real_workloads_converge_and_route_through_apache() {
    let mut cluster = Cluster::start();
    let name = format!("real-{}", suffix());
    let _cleanup = DockerCleanup { sandbox: name.clone() };
    let host = docker_host_ip();
    let ocp = OcpStandIn::start(&["account", "payment", "user"]);
    let ocp_url = format!("http://{host}:{}", ocp.port);

    // The Go services and the module cache an operator would copy onto the VM, made offline.
    let go = cluster.path().join("go");
    run(Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/go-services.sh"))
        .arg(&go));
    let account = ServiceRepo::from_work(cluster.path(), "account", &go.join("account"));
    let payment = ServiceRepo::from_work(cluster.path(), "payment", &go.join("payment"));
    let gateway = gateway_repo(cluster.path(), "develop", &["account", "payment", "user"], &ocp_url);

    let micro = cluster.agent_yaml(
        "micro-real",
        "micro",
        &[("account", &account.clone), ("payment", &payment.clone)],
        &format!(
            "goEnv:\n  GOMODCACHE: {}\n  GOPROXY: 'off'\n",
            go.join("modcache").display()
        ),
    );
    set_yaml(&micro, "address: 127.0.0.1", &format!("address: {host}"));
    // Only the webhook can make this agent fetch within the test.
    set_yaml(&micro, "fetchSecs: 1", "fetchSecs: 3600");
    // The gateway agent with the role's defaults: nothing about ports, mounts, reload or commands.
    let gw = cluster.agent_yaml("gateway-real", "gateway", &[("gateway", &gateway.clone)], "");
    cluster.start_agent(&micro, "micro-real");
    cluster.start_agent(&gw, "gateway-real");

    let ports = (cluster.gateway_port(), cluster.service_port(), cluster.service_port());
    let gateway_port = ports.0;
    cluster.commit("environments/account-files.yaml", ENVIRONMENT, "account's files");
    let file = format!("sandboxes/{name}.yaml");
    cluster.commit(
        &file,
        &manifest(&name, "sandbox", ports, &host),
        "a sandbox of real workloads",
    );
    let sandbox_commit = git(&cluster.config, &["rev-parse", "HEAD"]);

    // 1. Each route answers from the right place.
    let account_head = git(&account.origin, &["rev-parse", "main"]);
    let answer = wait_for(
        "account through the gateway",
        Duration::from_secs(300),
        || match through(gateway_port, "/account/hello") {
            Ok(a) if a.contains(&account_head) => Ok(a),
            other => Err(format!("{other:?}\n{}", cluster.logs())),
        },
    );
    assert!(answer.starts_with("account branch=main"), "{answer}");
    assert!(
        answer.contains("greet=hello account from greet v1.2.0 path=/hello"),
        "the vendored module is in the build: {answer}"
    );
    let paid = wait_for("payment through the gateway", Duration::from_secs(60), || {
        through(gateway_port, "/payment/x")
    });
    assert!(
        paid.starts_with("payment branch=main") && paid.contains("greet=hello payment from greet v1.2.0"),
        "payment was built from ./cmd/payment with the module cache from goEnv: {paid}"
    );
    assert_eq!(through(gateway_port, "/user/").unwrap().trim(), "ocp user");
    // The Environment's file is mounted read-only at its path under the working directory.
    assert_eq!(through(gateway_port, "/account/file/conf/app.yaml").unwrap(), APP_YAML);
    assert_eq!(through(gateway_port, "/account/env/GREETING").unwrap(), "hello");
    let mounts = inspect(
        &format!("sandbox-{name}-account"),
        "{{range .Mounts}}{{.Destination}}:{{.RW}} {{end}}",
    );
    assert!(mounts.contains("/src/conf/app.yaml:false"), "{mounts}");
    assert!(
        mounts.contains("/src:false"),
        "a Go service's worktree is read-only: {mounts}"
    );
    let wrote = Command::new("docker")
        .args([
            "exec",
            &format!("sandbox-{name}-account"),
            "sh",
            "-c",
            "echo x > /src/.git",
        ])
        .output()
        .unwrap();
    assert!(!wrote.status.success(), "the container wrote into its worktree");

    // 2. The gateway container is php:8.3-apache as production runs it.
    let gw_container = format!("sandbox-{name}-gateway");
    let env = inspect(&gw_container, "{{range .Config.Env}}{{.}} {{end}}");
    assert!(
        env.contains("APACHE_DOCUMENT_ROOT=/var/www/html/erangel-ocean"),
        "{env}"
    );
    assert!(env.contains("GATEWAY_MODE=sandbox"), "the gateway takes env: {env}");
    let gw_mounts = inspect(&gw_container, "{{range .Mounts}}{{.Destination}} {{end}}");
    assert!(gw_mounts.contains("/var/www/html/erangel-ocean"), "{gw_mounts}");
    assert!(
        inspect(&gw_container, "{{json .NetworkSettings.Ports}}").contains("\"80/tcp\""),
        "Apache's port 80 is published"
    );
    assert_eq!(
        through(gateway_port, "/").unwrap().trim(),
        "gateway base_url=''",
        "base_url is the branch's empty value"
    );

    // 3. config.php: only the routed keys differ from the branch's file; every other byte is the branch's.
    let worktree = cluster
        .path()
        .join(format!("agent-gateway-real/worktrees/{name}/gateway"));
    let config_php = worktree.join("application/config/production/config.php");
    let branch_file = git(
        &gateway.clone,
        &["show", "origin/develop:application/config/production/config.php"],
    );
    let expected = branch_file
        .replace(&format!("{ocp_url}/account"), &format!("http://{host}:{}", ports.1))
        .replace(&format!("{ocp_url}/payment"), &format!("http://{host}:{}", ports.2));
    let live = std::fs::read_to_string(&config_php).unwrap();
    assert_eq!(live.trim_end(), expected.trim_end());
    assert!(live.contains("$config['base_url'] = '';"));
    assert!(live.contains("// $config['legacy_url'] = 'http://legacy.internal:80';"));

    // 4. A route change reaches the next request through a graceful reload: same container, start and PID 1.
    let before = (
        inspect(&gw_container, "{{.Id}}"),
        inspect(&gw_container, "{{.State.StartedAt}}"),
        inspect(&gw_container, "{{.State.Pid}}"),
    );
    cluster.commit(&file, &manifest(&name, "ocp", ports, &host), "account back to OCP");
    wait_for("account to go to OCP", Duration::from_secs(60), || {
        match through(gateway_port, "/account/") {
            Ok(a) if a.trim() == "ocp account" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let after = (
        inspect(&gw_container, "{{.Id}}"),
        inspect(&gw_container, "{{.State.StartedAt}}"),
        inspect(&gw_container, "{{.State.Pid}}"),
    );
    assert_eq!(
        after, before,
        "Apache reloaded gracefully, the container was not replaced"
    );
    let route_commit = git(&cluster.config, &["rev-parse", "HEAD"]);
    assert_ne!(route_commit, sandbox_commit);

    // 5. A push to payment's branch, announced by Bitbucket's webhook, redeploys payment at once.
    cluster.commit("README.md", "The config repo.\n", "a commit that touches no sandbox");
    let pushed = payment.push(
        "main",
        "cmd/payment/pushed.go",
        "package main\n\nconst pushed = \"yes\"\n",
    );
    let hook = ureq::post(format!("{}/api/v1/hooks/git", cluster.api))
        .send(r#"{"eventKey":"repo:refs_changed","repository":{"slug":"payment","project":{"key":"CC"}}}"#)
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(hook.contains("\"agentsAsked\":true"), "{hook}");
    wait_for(
        "the pushed commit through the gateway",
        Duration::from_secs(120),
        || match through(gateway_port, "/payment/") {
            Ok(a) if a.contains(&pushed) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let deployments = get_json(&format!("{}/api/v1/deployments?sandbox={name}", cluster.api)).unwrap();
    let redeploy = deployments
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["service"] == "payment" && d["commit"] == pushed.as_str())
        .unwrap_or_else(|| panic!("no deployment of the pushed commit: {deployments:#}"));
    assert_eq!(
        redeploy["configCommit"], route_commit,
        "the audit names the commit that last changed the sandbox's file, not HEAD"
    );
    assert_eq!(redeploy["configAuthor"], "Ann Tester <ann@example.com>");
    assert!(redeploy["reason"].as_str().unwrap().contains("branch"), "{redeploy:#}");
    assert!(!redeploy["trigger"].as_str().unwrap().is_empty(), "{redeploy:#}");
}

#[test]
fn a_build_without_its_modules_fails_with_gos_own_first_error() {
    let mut cluster = Cluster::start();
    let name = format!("nomod-{}", suffix());
    let _cleanup = DockerCleanup { sandbox: name.clone() };
    let go = cluster.path().join("go");
    run(Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/go-services.sh"))
        .arg(&go));
    let payment = ServiceRepo::from_work(cluster.path(), "payment", &go.join("payment"));
    // No goEnv: the offline defaults, and no module cache holds example.com/greet.
    let micro = cluster.agent_yaml("micro-nomod", "micro", &[("payment", &payment.clone)], "");
    cluster.start_agent(&micro, "micro-nomod");
    let manifest = format!(
        "apiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  gateway:\n    branch: develop\n  \
         services:\n    payment:\n      branch: main\n      build: {{ package: ./cmd/payment }}\n"
    );
    cluster.commit(&format!("sandboxes/{name}.yaml"), &manifest, "payment without modules");
    let api = cluster.api.clone();
    let error = wait_for("the build error in the status", Duration::from_secs(180), || {
        let sb = get_json(&format!("{api}/api/v1/sandboxes/{name}"))?;
        match sb["status"]["lastError"].as_str() {
            Some(e) if e.contains("go build") => Ok(e.to_string()),
            _ => Err(sb["status"].to_string()),
        }
    });
    assert!(
        error.contains("go build ./cmd/payment failed: cmd/payment/main.go") && error.contains("GOPROXY=off"),
        "go's first error line is in the status: {error}"
    );
    // The whole output is in the deployment's log.
    let deployments = get_json(&format!("{api}/api/v1/deployments?sandbox={name}")).unwrap();
    let id = deployments[0]["id"].as_u64().unwrap();
    let log = std::fs::read_to_string(cluster.path().join(format!("data/logs/{id}.log"))).unwrap();
    assert!(log.contains("module lookup disabled by GOPROXY=off"), "{log}");
}

/// What `sdp-agent doctor` says of this node (every line, whatever the verdict).
fn doctor(yaml: &Path) -> String {
    let out = Command::new(binaries().join("sdp-agent"))
        .arg("--config")
        .arg(yaml)
        .arg("doctor")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn doctor_checks_go_the_module_cache_and_the_gateway_image() {
    let php = php_image();
    let cluster = Cluster::start();
    let go = cluster.path().join("go");
    run(Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/go-services.sh"))
        .arg(&go));
    let filled = cluster.agent_yaml(
        "micro-doc",
        "micro",
        &[],
        &format!("goEnv:\n  GOMODCACHE: {}\n", go.join("modcache").display()),
    );
    let said = doctor(&filled);
    assert!(said.contains("PASS go: go version go1."), "{said}");
    assert!(
        said.contains("PASS go modules: module cache") && said.contains("holds 1 module host(s)"),
        "{said}"
    );
    let empty = cluster.path().join("empty-cache");
    std::fs::create_dir_all(&empty).unwrap();
    let unfilled = cluster.agent_yaml(
        "micro-doc2",
        "micro",
        &[],
        &format!(
            "goEnv:\n  GOMODCACHE: {}\n  GOPROXY: file://{}/nowhere\n",
            empty.display(),
            empty.display()
        ),
    );
    let said = doctor(&unfilled);
    assert!(
        said.contains("FAIL go modules") && said.contains("holds no modules"),
        "{said}"
    );
    assert!(
        said.contains("FAIL go proxy") && said.contains("is not a directory"),
        "{said}"
    );

    let gateway = cluster.agent_yaml("gw-doc", "gateway", &[], "");
    let said = doctor(&gateway);
    assert!(
        said.contains("PASS gateway image: runs `docker-php-entrypoint apache2-foreground` on 80/tcp")
            && said.contains("/var/www/html/erangel-ocean"),
        "{said}"
    );
    let busybox = cluster.agent_yaml("gw-doc2", "gateway", &[], "");
    set_yaml(&busybox, php, runtime_image());
    let said = doctor(&busybox);
    assert!(
        said.contains("FAIL gateway image") && said.contains("not Apache"),
        "{said}"
    );
}
