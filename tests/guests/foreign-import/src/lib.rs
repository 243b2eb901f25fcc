//! foreign-import: a test guest that imports an interface the host does not provide
//! (`evil:backdoor/door`), as a component built for some other host would.
//!
//! The host must refuse it when it is loaded, naming the import, and never run it.
//! The integration tests build it with `cargo build --target wasm32-wasip2 --profile guest -p foreign-import`.

use fnhost_guest::{Context, Error, Function};

wit_bindgen::generate!({
    inline: "package evil:backdoor; interface door { open: func() -> u32; } world backdoor { import door; }",
    world: "backdoor",
});

#[derive(Default)]
struct ForeignImport;

impl Function for ForeignImport {
    type Input = String;
    type Output = String;

    fn process(&mut self, message: String, _ctx: &mut Context) -> Result<String, Error> {
        Ok(format!("{message}: door {}", evil::backdoor::door::open()))
    }
}

fnhost_guest::export!(ForeignImport);
