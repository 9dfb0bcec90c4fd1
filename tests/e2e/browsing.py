"""Checks the browser tests share: does a page fit a phone, are its pictures decoded."""


def fits(page, width: int = 360) -> bool:
    """True if the page needs no sideways scrolling at this width."""
    return page.evaluate("document.documentElement.scrollWidth") <= width


def pictures_decoded(images) -> bool:
    """Wait until every <img> of the locator has finished loading, then say whether each is a decoded
    picture rather than a broken icon. They load lazily, so each is brought into view first."""
    for index in range(images.count()):
        images.nth(index).scroll_into_view_if_needed()
    handles = images.element_handles()
    images.page.wait_for_function("images => images.every(image => image.complete)", arg=handles)
    return all(handle.evaluate("image => image.naturalWidth > 0") for handle in handles)
