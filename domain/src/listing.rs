//! Finding users in a long list: a text filter, the sort, and pages. Pure, so the same rules
//! hold for the REST API, the server functions and the tests.

use serde::{Deserialize, Serialize};

use crate::{SortDirection, UserSortKey, UserUsage, ValidationError, sort_users};

/// Which slice of the user list to show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserQuery {
    pub sort: UserSortKey,
    pub direction: SortDirection,
    /// Case-insensitive text found in the user id or the display name; empty: everyone.
    #[serde(default)]
    pub filter: String,
    /// 1-based; a page past the end shows the last page.
    pub page: u32,
    pub page_size: u32,
}

impl Default for UserQuery {
    fn default() -> Self {
        Self {
            sort: UserSortKey::UserId,
            direction: SortDirection::Asc,
            filter: String::new(),
            page: 1,
            page_size: Self::DEFAULT_PAGE_SIZE,
        }
    }
}

impl UserQuery {
    pub const DEFAULT_PAGE_SIZE: u32 = 25;
    pub const MAX_PAGE_SIZE: u32 = 500;
    pub const MAX_FILTER_LEN: usize = 100;

    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.page == 0 {
            return Err(ValidationError::new(
                "page",
                "invalid_page",
                "The page number starts at 1.",
            ));
        }
        if self.page_size == 0 || self.page_size > Self::MAX_PAGE_SIZE {
            return Err(ValidationError::new(
                "pageSize",
                "invalid_page_size",
                format!(
                    "The page size must be between 1 and {}.",
                    Self::MAX_PAGE_SIZE
                ),
            ));
        }
        if self.filter.chars().count() > Self::MAX_FILTER_LEN {
            return Err(ValidationError::new(
                "filter",
                "invalid_filter",
                format!(
                    "The filter text must be at most {} characters.",
                    Self::MAX_FILTER_LEN
                ),
            ));
        }
        Ok(())
    }
}

/// Whether a user matches the filter text: case-insensitive, in the id or the display name.
pub fn matches_filter(user: &UserUsage, filter: &str) -> bool {
    let needle = filter.trim().to_lowercase();
    needle.is_empty()
        || user.user_id.as_str().to_lowercase().contains(&needle)
        || user.display_name.as_str().to_lowercase().contains(&needle)
}

/// Where a page sits in the whole list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageInfo {
    /// The page shown (1-based, clamped to the last page).
    pub page: u32,
    pub page_size: u32,
    /// Matching items in all pages.
    pub total: u64,
    /// At least 1, even when nothing matches.
    pub pages: u32,
}

/// Page `page` of `total` items: the index range to show and where it sits.
pub fn page_bounds(total: usize, page: u32, page_size: u32) -> (std::ops::Range<usize>, PageInfo) {
    let size = page_size.max(1) as usize;
    let pages = total.div_ceil(size).max(1);
    let page = (page.max(1) as usize).min(pages);
    let start = (page - 1) * size;
    let end = (start + size).min(total);
    (
        start..end,
        PageInfo {
            page: page as u32,
            page_size: size as u32,
            total: total as u64,
            pages: u32::try_from(pages).unwrap_or(u32::MAX),
        },
    )
}

/// Filters, sorts (total order: ties by id) and cuts out one page.
pub fn query_users(mut users: Vec<UserUsage>, query: &UserQuery) -> (Vec<UserUsage>, PageInfo) {
    users.retain(|u| matches_filter(u, &query.filter));
    sort_users(&mut users, query.sort, query.direction);
    let (range, info) = page_bounds(users.len(), query.page, query.page_size);
    let page = users.drain(range).collect();
    (page, info)
}
