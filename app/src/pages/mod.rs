mod account;
mod chat;
mod dashboard;
mod limits;
mod login;
mod my_usage;
mod not_found;
mod users;

pub use account::{AccountPage, ApiKeys};
pub use chat::ChatPage;
pub use dashboard::{DashboardPage, MyDashboardPage};
pub use limits::LimitManagerPage;
pub use login::LoginPage;
pub use my_usage::MyUsagePage;
pub use not_found::NotFoundPage;
pub use users::UserListPage;
