// The WebSocket to the gateway: reconnects with back-off, re-sends the
// current subscription (or pause) after a reconnect, hands batches of
// updates on.
export class LiveFeed {
  constructor({ onStatus, onUpdates }) {
    this.onStatus = onStatus;
    this.onUpdates = onUpdates;
    this.machine = null;
    this.paused = false;
    this.ws = null;
    this.backoff = 500;
  }

  start() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${proto}://${location.host}/ws`);
    this.ws = ws;
    this.onStatus("connecting…");
    ws.onopen = () => {
      this.backoff = 500;
      this.onStatus("live");
      this.send();
    };
    ws.onmessage = (ev) => {
      let items;
      try {
        items = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (Array.isArray(items)) this.onUpdates(items);
    };
    ws.onclose = () => {
      this.onStatus("disconnected, retrying…");
      setTimeout(() => this.start(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, 10000);
    };
  }

  // null = summary of every machine; an id = that machine in full detail.
  subscribe(machine) {
    this.machine = machine;
    this.paused = false;
    this.send();
  }

  // Nothing but forgotten machines until resume(), which brings the
  // current state of the subscription first.
  pause() {
    this.paused = true;
    this.send();
  }

  resume() {
    this.subscribe(this.machine);
  }

  send() {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      const msg = this.paused ? { type: "pause" } : { type: "subscribe", machine: this.machine };
      this.ws.send(JSON.stringify(msg));
    }
  }
}
