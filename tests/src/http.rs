//! HTTP from a namespace to busybox httpd in a container, and the busybox image root the
//! runtime tests (Docker, Podman) import.
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::Path,
    process::Command,
    time::Duration,
};

use crate::topology;

/// GET `url` (`http://IP:PORT/PATH`) from namespace `ns`: the body's last line on a 200,
/// None on anything else (refused, timed out, another status).
pub fn get(ns: &str, url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let (addr, path) = rest.split_at(rest.find('/')?);
    let addr: std::net::SocketAddr = addr.parse().ok()?;
    topology::enter(ns, || {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        conn.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .ok()?;
        let mut response = String::new();
        conn.read_to_string(&mut response).ok()?;
        // The bodies here are one line; CGI headers may end in a bare \n.
        let status = response.lines().next()?;
        let body = response.trim_end().lines().last()?;
        status.contains(" 200 ").then(|| body.trim().to_owned())
    })
}

/// The client address busybox httpd's CGI shows: `198.18.0.1`, `[::ffff:198.18.0.1]` or
/// `[2001:db8::1]`, without brackets or the IPv4-mapped prefix.
pub fn client_of(remote_addr: &str) -> &str {
    let last = remote_addr.lines().last().unwrap_or("").trim();
    last.trim_start_matches("[::ffff:")
        .trim_start_matches('[')
        .trim_end_matches(']')
}

/// A document root with `index.html` and a CGI (`/cgi-bin/ip`) that prints the client's address.
pub fn write_www(www: &Path) {
    std::fs::create_dir_all(www.join("cgi-bin")).unwrap();
    std::fs::write(www.join("index.html"), "hello from busybox\n").unwrap();
    let cgi = www.join("cgi-bin/ip");
    std::fs::write(
        &cgi,
        "#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho \"$REMOTE_ADDR\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&cgi, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A busybox root at `root` with an httpd document root (`/www`, see `write_www`), and `/usr`
/// left empty for a read-only bind of the host's (python3 for a UDP echo).
pub fn busybox_root(root: &Path) {
    for dir in [
        "bin",
        "www/cgi-bin",
        "usr",
        "tmp",
        "proc",
        "sys",
        "dev",
        "etc",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
    for applet in ["sh", "httpd", "wget", "nc", "sleep", "cat", "echo", "ip"] {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    symlink("usr/lib", root.join("lib")).unwrap();
    symlink("usr/lib64", root.join("lib64")).unwrap();
    write_www(&root.join("www"));
}

/// `tar -C root -cf tar .`: the image a runtime imports.
pub fn tar(root: &Path, tar: &Path) {
    let out = Command::new("tar")
        .arg("-C")
        .arg(root)
        .arg("-cf")
        .arg(tar)
        .arg(".")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
