//! The agents' WebSocket over TLS, as deploy/nginx/sdp-tls.conf sets it up: nginx terminates TLS with a
//! throwaway CA's certificate for 127.0.0.1 and proxies to `sdp serve` under its base path. An agent that trusts
//! that CA (`caFile`) connects; one that trusts another CA is refused at the handshake, says so in its log, keeps
//! retrying with its backoff, and its token never reaches nginx or the reconciler.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sdp_e2e::*;

const BASE: &str = "/sandbox/credit-card";

/// The test's certificates: v3 extensions as a company CA would set them.
const OPENSSL_CNF: &str = "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = unused\n\
[ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n\
[server]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1\nsubjectKeyIdentifier = hash\n\
authorityKeyIdentifier = keyid\n";

/// `openssl` with `args` (split at spaces) in `dir`, on the test's config file.
fn openssl(dir: &Path, args: &str) {
    run(Command::new("openssl")
        .current_dir(dir)
        .args(args.split_whitespace())
        .env("OPENSSL_CONF", dir.join("openssl.cnf")));
}

const EC: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -config openssl.cnf";

/// A self-signed CA `name` in `dir`: `name.pem` (returned) and `name.key`.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &format!("req -x509 -new {EC} -keyout {name}.key -out {name}.pem -days 2 -extensions ca -subj /CN={name}"),
    );
    dir.join(format!("{name}.pem"))
}

/// A certificate for 127.0.0.1 signed by the CA `ca`: (`server.pem`, `server.key`).
fn make_server_cert(dir: &Path, ca: &str) -> (PathBuf, PathBuf) {
    openssl(
        dir,
        &format!("req -new {EC} -keyout server.key -out server.csr -subj /CN=127.0.0.1"),
    );
    openssl(
        dir,
        &format!(
            "x509 -req -in server.csr -CA {ca}.pem -CAkey {ca}.key -CAcreateserial -out server.pem -days 2 \
             -extfile openssl.cnf -extensions server"
        ),
    );
    (dir.join("server.pem"), dir.join("server.key"))
}

/// nginx in the foreground (one process, no workers) with deploy/'s TLS server block on a free 127.0.0.1 port,
/// proxying to the reconciler on `upstream`; killed when dropped. Its access log records the Authorization
/// header, so the test sees which tokens reached it.
struct Nginx {
    process: Process,
    port: u16,
    dir: PathBuf,
}

fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "`{from}` is no longer in the deploy example:\n{text}"
    );
    text.replace(from, to)
}

impl Nginx {
    fn start(dir: &Path, cert: &Path, key: &Path, upstream: u16) -> Nginx {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx");
        let port = free_port();
        let locations = std::fs::read_to_string(deploy.join("sdp-locations.conf")).unwrap();
        let locations = replaced(&locations, "127.0.0.1:3452", &format!("127.0.0.1:{upstream}"));
        std::fs::write(dir.join("sdp-locations.conf"), locations).unwrap();
        let server = std::fs::read_to_string(deploy.join("sdp-tls.conf")).unwrap();
        let server = replaced(&server, "listen 443 ssl;", &format!("listen 127.0.0.1:{port} ssl;"));
        let server = replaced(&server, "/etc/nginx/tls/sdp.crt", &cert.display().to_string());
        let server = replaced(&server, "/etc/nginx/tls/sdp.key", &key.display().to_string());
        let server = replaced(
            &server,
            "/etc/nginx/snippets/sdp-locations.conf",
            &dir.join("sdp-locations.conf").display().to_string(),
        );
        std::fs::write(dir.join("sdp-tls.conf"), server).unwrap();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {0}/nginx.pid;\nerror_log {0}/error.log info;\nevents {{}}\n\
             http {{\n  log_format agents '$status \"$request\" \"$http_authorization\"';\n  \
             access_log {0}/access.log agents;\n  client_body_temp_path {0}/body;\n  proxy_temp_path {0}/proxy;\n  \
             fastcgi_temp_path {0}/fastcgi;\n  uwsgi_temp_path {0}/uwsgi;\n  scgi_temp_path {0}/scgi;\n  \
             include {0}/sdp-tls.conf;\n}}\n",
            dir.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let process = Process::spawn(
            Command::new("/usr/sbin/nginx")
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(dir.join("nginx.conf")),
            dir.join("nginx.out"),
        );
        let nginx = Nginx {
            process,
            port,
            dir: dir.to_path_buf(),
        };
        wait_for("nginx to listen", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .map(drop)
                .map_err(|e| format!("{e}\n{}{}", nginx.process.output(), nginx.error_log()))
        });
        nginx
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

fn nodes(cluster: &Cluster) -> Vec<String> {
    let nodes = cluster.get("/api/v1/nodes").unwrap();
    nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"]["node"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn an_agent_connects_over_tls_only_to_a_reconciler_its_ca_signed() {
    let mut cluster = Cluster::start_with(BASE, &["--allow-anonymous".to_string()]);
    let pki = cluster.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    std::fs::write(pki.join("openssl.cnf"), OPENSSL_CNF).unwrap();
    let company_ca = make_ca(&pki, "company-ca");
    let other_ca = make_ca(&pki, "other-ca");
    let (cert, key) = make_server_cert(&pki, "company-ca");
    let nginx_dir = cluster.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir).unwrap();
    let nginx = Nginx::start(&nginx_dir, &cert, &key, cluster.port);
    let wss = format!("reconciler: wss://127.0.0.1:{}{BASE}/ws/agent\n", nginx.port);
    let plain = format!("reconciler: ws://127.0.0.1:{}{BASE}/ws/agent\n", cluster.port);

    // First an agent that trusts another CA: refused at the handshake, again and again, with a clear cause.
    let yaml = cluster.agent_yaml("micro-untrusted", "micro", &[], "");
    let text = std::fs::read_to_string(&yaml).unwrap();
    let text = replaced(&text, &plain, &wss);
    std::fs::write(&yaml, format!("{text}caFile: {}\n", other_ca.display())).unwrap();
    let log = cluster.path().join("micro-untrusted.log");
    cluster.agents.push(Process::spawn(
        Command::new(binaries().join("sdp-agent"))
            .arg("--config")
            .arg(&yaml)
            .arg("run"),
        log,
    ));
    let untrusted = cluster.agents.len() - 1;
    let said = wait_for("two refused handshakes", Duration::from_secs(60), || {
        let out = cluster.agents[untrusted].output();
        if out.matches("TLS handshake failed").count() >= 2 {
            Ok(out)
        } else {
            Err(out)
        }
    });
    assert!(said.contains("UnknownIssuer"), "{said}");
    assert!(said.contains("caFile"), "the log says what to check:\n{said}");
    assert!(said.contains("retry in"), "the backoff applies:\n{said}");
    assert!(!said.contains("travels in clear"), "{said}");
    // The handshake did reach nginx, and failed there...
    assert!(
        nginx.error_log().contains("SSL_do_handshake() failed"),
        "nginx saw no failed handshake:\n{}",
        nginx.error_log()
    );
    // ...and no request came through: neither nginx nor the reconciler ever saw the token or a connection.
    assert_eq!(nginx.access_log(), "", "a request passed a refused handshake");
    assert!(nodes(&cluster).is_empty());
    assert!(
        !cluster.serve.output().contains("micro-untrusted"),
        "{}",
        cluster.serve.output()
    );
    // `sdp-agent doctor` says the same, and does not send the token either.
    let report = doctor(&yaml);
    assert!(report.contains("FAIL reconciler tls: TLS handshake failed"), "{report}");
    assert!(
        !report.contains(" token:"),
        "no token step after a failed handshake:\n{report}"
    );
    assert_eq!(
        nginx.access_log(),
        "",
        "the doctor's request passed a refused handshake"
    );

    // An agent that trusts the company CA connects through nginx.
    let yaml = cluster.agent_yaml("micro-tls", "micro", &[], "");
    let text = std::fs::read_to_string(&yaml).unwrap();
    let text = replaced(&text, &plain, &wss);
    std::fs::write(&yaml, format!("{text}caFile: {}\n", company_ca.display())).unwrap();
    let trusted = cluster.start_agent(&yaml, "micro-tls");
    assert_eq!(nodes(&cluster), ["micro-tls"]);
    let said = cluster.agents[trusted].output();
    assert!(!said.contains("TLS handshake failed"), "{said}");
    assert!(!said.contains("travels in clear"), "{said}");

    // The access log does record tokens: once the trusted agent's connection ends, its upgrade is there, and it
    // is the only request nginx ever passed on.
    cluster.agents[trusted].kill();
    let access = wait_for("nginx to log the closed upgrade", Duration::from_secs(30), || {
        let log = nginx.access_log();
        if log.is_empty() {
            Err(nginx.error_log())
        } else {
            Ok(log)
        }
    });
    let lines: Vec<&str> = access.lines().collect();
    assert_eq!(lines.len(), 1, "{access}");
    assert!(
        lines[0].starts_with("101 ") && lines[0].contains(&format!("Bearer {TOKEN}")),
        "{access}"
    );
    assert!(
        cluster.agents[untrusted]
            .output()
            .matches("TLS handshake failed")
            .count()
            >= 2,
        "{}",
        cluster.logs()
    );
    assert!(
        !cluster.serve.output().contains("micro-untrusted"),
        "{}",
        cluster.logs()
    );

    // The doctor climbs the whole ladder over TLS with the trusted CA.
    let report = doctor(&yaml);
    for step in ["reconciler tls", "reconciler http", "reconciler websocket", "token"] {
        assert!(report.contains(&format!("PASS {step}:")), "{step}:\n{report}");
    }
}

/// `sdp-agent doctor`'s report (its exit code depends on more than the reconciler: Docker, Go...).
fn doctor(yaml: &Path) -> String {
    let out = Command::new(binaries().join("sdp-agent"))
        .arg("--config")
        .arg(yaml)
        .arg("doctor")
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
