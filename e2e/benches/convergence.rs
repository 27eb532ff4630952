//! Convergence benchmark (issue 5), on the real engine: the time from a commit that resumes a sandbox of three
//! services (binaries already built) to all three containers running, against `docker-compose up -d` of a
//! compose file with the same containers, image, mounts and ports; alternating, five runs each; medians and the
//! ratio (target at most 1.0). Beside them the engine's own floor: three `docker run -d` of the same containers
//! side by side (one thread each), and how far above it SDP stays. Then the number of Docker events that change
//! anything when an unchanged sandbox is applied again (target zero). Run: `cargo bench -p sdp-e2e --bench
//! convergence`.

use std::process::Command;
use std::time::{Duration, Instant};

use sdp_e2e::*;

const RUNS: usize = 5;
const SERVICES: [&str; 3] = ["account", "payment", "user"];

fn running(names: &[String]) -> bool {
    let out = Command::new("docker")
        .args(["ps", "--filter", "status=running", "--format", "{{.Names}}"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    names.iter().all(|n| text.lines().any(|l| l == n))
}

fn until_running(names: &[String], started: Instant) -> Duration {
    let limit = Duration::from_secs(120);
    while !running(names) {
        assert!(started.elapsed() < limit, "not running after {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Removes the engine-floor containers, whatever way the benchmark ends.
struct RemoveContainers(Vec<String>);

impl Drop for RemoveContainers {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f"]).args(&self.0).output();
    }
}

fn manifest(name: &str, ports: &[u16], suspend: bool) -> String {
    let mut s = format!(
        "apiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  gateway:\n    branch: develop\n  services:\n"
    );
    for (svc, port) in SERVICES.iter().zip(ports) {
        s.push_str(&format!("    {svc}:\n      branch: main\n      port: {port}\n"));
    }
    if suspend {
        s.push_str("  suspend: true\n");
    }
    s
}

fn main() {
    if Command::new("docker-compose").arg("version").output().is_err() {
        eprintln!("this benchmark compares with docker-compose: apt-get install docker-compose");
        std::process::exit(2);
    }
    let mut cluster = Cluster::start();
    let name = format!("bench-{}", suffix());
    let _clean = DockerCleanup { sandbox: name.clone() };
    let repos: Vec<ServiceRepo> = SERVICES
        .iter()
        .map(|s| ServiceRepo::new(cluster.path(), s, "main"))
        .collect();
    let repo_list: Vec<(&str, &std::path::Path)> = SERVICES
        .iter()
        .zip(&repos)
        .map(|(s, r)| (*s, r.clone.as_path()))
        .collect();
    let yaml = cluster.agent_yaml("micro-bench", "micro", &repo_list, "containerPort: 8080\n");
    cluster.start_agent(&yaml, "micro-bench");
    let ports: Vec<u16> = SERVICES.iter().map(|_| cluster.service_port()).collect();
    let file = format!("sandboxes/{name}.yaml");
    let containers: Vec<String> = SERVICES.iter().map(|s| format!("sandbox-{name}-{s}")).collect();

    // Warm up: the first deploy builds the binaries.
    let t = Instant::now();
    cluster.commit(&file, &manifest(&name, &ports, false), "bench sandbox");
    until_running(&containers, t);
    std::thread::sleep(Duration::from_secs(3));

    // The same containers for docker-compose: image, command, mounts, env and ports as the agent made them.
    let agent_dir = cluster.path().join("agent-micro-bench");
    let compose_ports: Vec<u16> = SERVICES.iter().map(|_| free_port()).collect();
    let mut compose = String::from("version: \"2.4\"\nservices:\n");
    for ((svc, port), _) in SERVICES.iter().zip(&compose_ports).zip(&ports) {
        compose.push_str(&format!(
            "  {svc}:\n    image: {}\n    container_name: compose-{name}-{svc}\n    command: [/sdp-bin/app]\n    working_dir: /src\n    environment: [PORT=8080]\n    ports: [\"{port}:8080\"]\n    restart: unless-stopped\n    volumes:\n      - {}:/src\n      - {}:/sdp-bin:ro\n",
            runtime_image(),
            agent_dir.join("worktrees").join(&name).join(svc).display(),
            agent_dir.join("bin").join(&name).join(svc).display(),
        ));
    }
    // The engine's floor: the same containers by `docker run -d`, three at once, nothing else.
    let engine_names: Vec<String> = SERVICES.iter().map(|s| format!("engine-{name}-{s}")).collect();
    let _engine_clean = RemoveContainers(engine_names.clone());
    let engine_runs: Vec<Vec<String>> = SERVICES
        .iter()
        .zip(&engine_names)
        .map(|(svc, container)| {
            vec![
                "run".to_string(),
                "-d".into(),
                "--name".into(),
                container.clone(),
                "-e".into(),
                "PORT=8080".into(),
                "-w".into(),
                "/src".into(),
                "-p".into(),
                format!("{}:8080", free_port()),
                "--restart".into(),
                "unless-stopped".into(),
                "-v".into(),
                format!("{}:/src", agent_dir.join("worktrees").join(&name).join(svc).display()),
                "-v".into(),
                format!("{}:/sdp-bin:ro", agent_dir.join("bin").join(&name).join(svc).display()),
                runtime_image().to_string(),
                "/sdp-bin/app".into(),
            ]
        })
        .collect();
    let compose_dir = cluster.path().join("compose");
    std::fs::create_dir_all(&compose_dir).unwrap();
    std::fs::write(compose_dir.join("docker-compose.yml"), compose).unwrap();
    let compose_names: Vec<String> = SERVICES.iter().map(|s| format!("compose-{name}-{s}")).collect();
    let project = format!("sdpbench{}", suffix());
    let dc = |args: &[&str]| {
        run(Command::new("docker-compose")
            .current_dir(&compose_dir)
            .args(["-p", &project])
            .args(args));
    };

    let (mut sdp, mut baseline, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..RUNS {
        // SDP: suspended (containers stopped), then a commit that resumes it.
        cluster.commit(&file, &manifest(&name, &ports, true), "suspend");
        while running(&containers[..1]) {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(1));
        let t = Instant::now();
        cluster.commit(&file, &manifest(&name, &ports, false), "resume");
        sdp.push(until_running(&containers, t));

        // docker-compose: from nothing to running.
        dc(&["down", "--timeout", "1"]);
        let t = Instant::now();
        dc(&["up", "-d"]);
        baseline.push(until_running(&compose_names, t));
        dc(&["down", "--timeout", "1"]);

        // The engine: three `docker run -d` side by side.
        let _ = Command::new("docker").args(["rm", "-f"]).args(&engine_names).output();
        let t = Instant::now();
        std::thread::scope(|scope| {
            for args in &engine_runs {
                scope.spawn(move || run(Command::new("docker").args(args)));
            }
        });
        floor.push(until_running(&engine_names, t));
        let _ = Command::new("docker").args(["rm", "-f"]).args(&engine_names).output();
        eprintln!(
            "run {}: sdp {:?}, docker-compose {:?}, 3 x docker run -d {:?}",
            i + 1,
            sdp[i],
            baseline[i],
            floor[i]
        );
    }
    let (s, c, f) = (median(sdp), median(baseline), median(floor));
    println!("commit -> 3 containers running: sdp median {s:?}, docker-compose up -d median {c:?}");
    println!(
        "ratio sdp / docker-compose: {:.2} (target <= 1.0)",
        s.as_secs_f64() / c.as_secs_f64()
    );
    println!(
        "engine floor, 3 x docker run -d side by side: median {f:?}; sdp stays {:?} above it ({:.2} x the floor)",
        s.saturating_sub(f),
        s.as_secs_f64() / f.as_secs_f64()
    );

    // Re-apply of an unchanged sandbox: count Docker events that change anything.
    std::thread::sleep(Duration::from_secs(3));
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut text = manifest(&name, &ports, false);
    text.push_str("# re-applied, unchanged\n");
    cluster.commit(&file, &text, "re-apply unchanged");
    std::thread::sleep(Duration::from_secs(6));
    let until = since + 7;
    let events = run(Command::new("docker").args([
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &until.to_string(),
        "--filter",
        &format!("label=sdp.sandbox={name}"),
        "--format",
        "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}",
    ]));
    let changing: Vec<&str> = events
        .lines()
        .filter(|l| !l.contains(" exec_") && !l.contains(" attach") && !l.trim().is_empty())
        .collect();
    println!(
        "Docker events that change anything on a re-apply of an unchanged sandbox: {} (target 0)",
        changing.len()
    );
    for e in &changing {
        println!("  {e}");
    }
}
