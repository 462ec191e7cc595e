"""Notification channels of alert events: webhooks (generic, WeCom, DingTalk, Feishu), e-mail and MQTT."""
