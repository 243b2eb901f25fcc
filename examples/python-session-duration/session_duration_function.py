import pulsar
from fnhost import Function
import time

class SessionDurationFunction(Function):
    def __init__(self):
        self.user_sessions = {} # This is our "state"

    def process(self, input, context):
        data = input.decode('utf-8')
        try:
            import json
            record = json.loads(data)
            user_id = record.get('user_id')
            event_type = record.get('event_type')
            timestamp = record.get('timestamp')

            if not user_id or not event_type or timestamp is None:
                context.get_logger().warn(f"Skipping malformed record: {data}")
                return

            if event_type == 'login':
                self.user_sessions[user_id] = timestamp
                context.get_logger().info(f"User {user_id} logged in at {timestamp}")
            elif event_type == 'logout':
                if user_id in self.user_sessions:
                    login_timestamp = self.user_sessions[user_id]
                    session_duration = timestamp - login_timestamp
                    context.get_logger().info(f"User {user_id} session duration: {session_duration} seconds")
                    # Optionally, emit this result to another topic
                    # context.get_output_topic().publish(f"user:{user_id},duration:{session_duration}".encode('utf-8'))
                    del self.user_sessions[user_id] # Clear state after logout
                else:
                    context.get_logger().warn(f"User {user_id} logged out without a prior login.")
            else:
                # Handle other event types if necessary
                pass

        except json.JSONDecodeError:
            context.get_logger().error(f"Failed to decode JSON: {data}")
        except Exception as e:
            context.get_logger().error(f"An error occurred: {e}")
