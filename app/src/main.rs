//! Entry point of the web app: mounts [`app::App`] on the page's body.

fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(app::App);
}
