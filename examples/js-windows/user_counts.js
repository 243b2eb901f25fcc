// user-counts: how many events each user had in each tumbling window of 10 events.
// Input: JSON events with a `user_id`. Output, per window: {"u0":4,"u1":3}, users in name order.
// Run it: fnhost localrun --js examples/js-windows/user_counts.js --name user-counts --inputs events --output counts --window-length-count 10 --until-idle

const decoder = new TextDecoder();

export default class UserCounts {
  process(window) {
    const counts = {};
    for (const value of window.values) {
      const user = JSON.parse(decoder.decode(value)).user_id ?? "";
      counts[user] = (counts[user] ?? 0) + 1;
    }
    return Object.fromEntries(Object.entries(counts).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  }
}
