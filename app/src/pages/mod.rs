mod dashboard;
mod home;
mod not_found;

pub use dashboard::DashboardPage;
pub use home::HomePage;
pub use not_found::NotFoundPage;
