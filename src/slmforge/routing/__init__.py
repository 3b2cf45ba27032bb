"""Who answers a chat: the local/cloud router shared by the web app and `serve --route`."""
