"""Device profiles and site configs: loading, validation with file/line/key errors."""

from edge.config.profile import Point, Profile, load_profile
from edge.config.site import LoadedSite, SiteConfig, load_site

__all__ = ["LoadedSite", "Point", "Profile", "SiteConfig", "load_profile", "load_site"]
