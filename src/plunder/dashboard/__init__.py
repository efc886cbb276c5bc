"""``plunderctl dashboard``: a read-only web page of the fleet, served on loopback.

``shaping`` turns the API's raw objects into what the page shows (pure functions); ``fleet``
keeps the objects the watches bring; ``server`` is the aiohttp app; ``static/`` is the page
(plain JavaScript and inline SVG, no build step and nothing fetched from elsewhere).
"""
