// The WebSocket to the gateway: reconnects with back-off, re-sends the
// current subscription after a reconnect, hands batches of updates on.
export class LiveFeed {
  constructor({ onStatus, onUpdates }) {
    this.onStatus = onStatus;
    this.onUpdates = onUpdates;
    this.machine = null;
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
    this.send();
  }

  send() {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ type: "subscribe", machine: this.machine }));
    }
  }
}
