//! The same server on both monoio drivers (io_uring and the legacy epoll
//! driver the benchmark compares against): each must say which it runs and
//! deliver across cores, durably.

mod common;

use common::*;

fn exercise(driver: &'static str, log_name: &str) {
    let mut s = Config::default().driver(driver).durable("always").start();
    assert!(s.stderr_tail().contains(&format!("driver={log_name}")), "{}", s.stderr_tail());
    // Users spread over both cores: a ring of sends, each acknowledged.
    let users: Vec<String> = (0..6).map(|i| format!("{driver}-user{i}")).collect();
    let mut clients: Vec<Client> = users.iter().map(|u| s.login(u, "phone", 0).0).collect();
    for round in 1..=20u64 {
        for i in 0..users.len() {
            let to = &users[(i + 1) % users.len()];
            clients[i].send_ok(round, to, format!("{round} from {i}").as_bytes());
        }
        for i in 0..users.len() {
            let from = (i + users.len() - 1) % users.len();
            clients[i].expect_push_seq(round, format!("{round} from {from}").as_bytes());
            clients[i].ack(round);
        }
    }
    s.assert_no_panic();
    drop(clients);
    s.sigterm();
    assert_eq!(s.wait_exit(WAIT).and_then(|e| e.code()), Some(0));
}

#[test]
fn legacy_epoll_driver_serves() {
    exercise("legacy", "legacy");
}

#[test]
fn io_uring_driver_serves() {
    exercise("uring", "io_uring");
}
