//! A plugin that opens a TCP connection, so its component imports
//! `wasi:sockets/*`: the broker must refuse to load it. (Were it loaded, the
//! sandbox would have no network and the connect would fail.)

use hookwire_plugin::prelude::*;

pub struct NetImport;

impl Plugin for NetImport {
    const NAME: &str = "net-import";
    const VERSION: &str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::PUBLISH;

    fn init(_config: Value) -> Result<Self, String> {
        Ok(Self)
    }

    fn on_publish(&mut self, _publication: &mut Publication) -> Decision {
        match std::net::TcpStream::connect("127.0.0.1:9") {
            Ok(_) => Decision::refuse("the sandbox let a plugin open a socket"),
            Err(_) => Decision::Allow,
        }
    }
}

export!(NetImport);
